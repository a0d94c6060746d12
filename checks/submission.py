"""A learner's submission: which of their namespaces play which role, and nothing that grades.

The instructor's assignment (``checks/assignment.py``) decides what is checked, how much each
check is worth and how long it may take; the learner's file only points at what they built::

    # alice.yaml (the learner is "alice": the grader takes the name from the file or NAME=PATH)
    sandboxes:
      c1: {netns: alice-c1, addresses: {app: 10.0.0.2}, host: h}
      c2: {pid: 4242, addresses: {app: 10.0.0.3}}
    hosts:
      h: {netns: alice-host, public_ip: 203.0.113.10}
    upstream: {netns: alice-inet, ip: 198.51.100.10}     # optional
    extra_checks:                                        # optional: the learner's own,
      - reachable: {from: c1, to: c2}                    # reported apart, never graded

Every field is checked and an unknown one is an error, so a learner cannot slip in a field
that changes the grade (``name:``, ``profile:``, ``checks:`` get a message saying why). A
submission never names code to run (no ``python:`` checks), and every namespace it names must
be one the learner made: the machine's own (PID 1's, the grader's) is refused under any name,
path, bind mount or PID, when the file is read and again each time a check enters it. Every
error is one line naming the file, the line and the field.
"""
from __future__ import annotations

import ipaddress
import os
import re
from typing import Any

from cnmlab import yamlsrc
from cnmlab.checks import library
from cnmlab.checks.api import UPSTREAM, UPSTREAM_NET, UPSTREAM_WEB, HostRef, SandboxRef
from cnmlab.checks.kinds import parse_spec
from cnmlab.checks.nsref import MachineNamespace, NamespaceDenied, NsRef
from cnmlab.errors import InvalidInput
from cnmlab.yamlsrc import Source

_TOP = {"sandboxes", "hosts", "upstream", "extra_checks"}
_NS_KEYS = ("netns", "pid", "path")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NO_CODE = ("python",)  # check kinds that run code named in the file

# fields a learner might try, and why the submission is the wrong place for them
_NOT_HERE = {
    "name": "a submission does not name its learner: the grader takes the identity from the "
            "file name (or NAME=PATH)",
    "learner": "a submission does not name its learner: the grader takes the identity from the "
               "file name (or NAME=PATH)",
    "profile": "a submission cannot choose what is graded: the instructor's assignment does",
    "checks": "a submission cannot choose what is graded: the instructor's assignment does "
              "(your own checks go under extra_checks:, they are reported but not graded)",
    "points": "points are set by the instructor's assignment",
    "budget": "time limits are set by the instructor's assignment",
    "deadline": "time limits are set by the instructor's assignment",
}


def _unknown(src: Source, where: tuple[Any, ...], spec: dict[Any, Any], known: set[str]) -> None:
    for k in spec:
        if k not in known:
            why = _NOT_HERE.get(k) if not where else None
            raise src.error(where + (k,), why or f"unknown field; known: "
                                                f"{', '.join(sorted(known))}")


def _mapping(src: Source, where: tuple[Any, ...], value: Any, what: str) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise src.error(where, f"must be a mapping of {what}, got {type(value).__name__}")
    return value


def _name(src: Source, where: tuple[Any, ...], value: Any, what: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value) or value == UPSTREAM:
        raise src.error(where, f"{value!r} is not a usable {what} name (letters, digits, '_', "
                               f"'.', '-'; not 'upstream')")
    return value


def _ipv4(src: Source, where: tuple[Any, ...], value: Any) -> str:
    if not isinstance(value, str):
        raise src.error(where, f"{value!r} is not an IPv4 address (write it as a string)")
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise src.error(where, f"{value!r} is not an IPv4 address") from None


def _nsref(src: Source, where: tuple[Any, ...], spec: dict[str, Any]) -> NsRef:
    """The namespace a role lives in, as a foreign reference (never the machine's own)."""
    given = [k for k in _NS_KEYS if k in spec]
    if len(given) != 1:
        raise src.error(where + tuple(given[1:2]),
                        "give exactly one of netns: NAME, pid: N or path: P"
                        + (f" (got {', '.join(given)})" if given else ""))
    key = given[0]
    value = spec[key]
    if key == "pid":
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise src.error(where + ("pid",), f"{value!r} is not a process id")
        ref = NsRef(pid=value, foreign=True)
    elif not isinstance(value, str) or not value:
        raise src.error(where + (key,), f"{value!r} is not a {'path' if key == 'path' else 'name'}")
    elif key == "path":
        if not value.startswith("/"):
            raise src.error(where + ("path",), f"{value!r} must be an absolute path")
        ref = NsRef(path=value, foreign=True)
    else:
        if "/" in value or value in (".", ".."):
            raise src.error(where + ("netns",), f"{value!r}: a netns name has no '/' (use path:)")
        ref = NsRef(name=value, foreign=True)
    try:
        ref.check_foreign()
    except (MachineNamespace, NamespaceDenied) as e:
        raise src.error(where + (key,), str(e)) from None
    return ref


class SubmissionTarget:
    """A learner's hand-built namespaces as a check target (``api.Target``).

    ``learner`` comes from the caller (the grader), never from the file. ``extra_checks`` are
    the learner's own check specs, validated, free of code, and never part of a grade.
    """

    profile: frozenset[str] = frozenset()  # a submission never narrows what is checked

    def __init__(self, path: str, learner: str | None = None) -> None:
        self.path = path
        self._parse(yamlsrc.load(path))
        self.learner = learner or os.path.splitext(os.path.basename(path))[0]
        self.name = f"submission {self.learner}"

    @classmethod
    def from_text(cls, text: str, path: str, learner: str) -> "SubmissionTarget":
        self = cls.__new__(cls)
        self.path = path
        self._parse(yamlsrc.parse(text, path))
        self.learner = learner
        self.name = f"submission {learner}"
        return self

    def _parse(self, src: Source) -> None:
        data = src.data
        if not isinstance(data, dict):
            raise src.error((), "a submission is a mapping with sandboxes:, hosts:, upstream:")
        _unknown(src, (), data, _TOP)
        self._hosts: dict[str, HostRef] = {}
        hosts = data.get("hosts")
        for hname, spec in _mapping(src, ("hosts",), hosts if hosts is not None else {},
                                    "hosts").items():
            where = ("hosts", hname)
            hname = _name(src, where, hname, "host")
            spec = _mapping(src, where, spec, "fields")
            _unknown(src, where, spec, {*_NS_KEYS, "public_ip"})
            public = spec.get("public_ip")
            self._hosts[hname] = HostRef(
                hname, _nsref(src, where, spec),
                _ipv4(src, where + ("public_ip",), public) if public is not None else None)
        self._sandboxes: dict[str, SandboxRef] = {}
        sbs = data.get("sandboxes")
        for sname, spec in _mapping(src, ("sandboxes",), sbs if sbs is not None else {},
                                    "sandboxes").items():
            where = ("sandboxes", sname)
            sname = _name(src, where, sname, "sandbox")
            spec = _mapping(src, where, spec, "fields")
            _unknown(src, where, spec, {*_NS_KEYS, "addresses", "host"})
            raw = spec.get("addresses")
            addrs = _mapping(src, where + ("addresses",), raw if raw is not None else {},
                             "network: IPv4")
            host = spec.get("host")
            if host is None and len(self._hosts) == 1:
                host = next(iter(self._hosts))
            if host is not None and (not isinstance(host, str) or host not in self._hosts):
                raise src.error(where + ("host",), f"no host {host!r} in hosts:")
            self._sandboxes[sname] = SandboxRef(
                sname, _nsref(src, where, spec),
                {_name(src, where + ("addresses", n), n, "network"):
                 _ipv4(src, where + ("addresses", n), ip) for n, ip in addrs.items()},
                host)
        self._upstream: SandboxRef | None = None
        if data.get("upstream") is not None:
            spec = _mapping(src, ("upstream",), data["upstream"], "fields")
            _unknown(src, ("upstream",), spec, {*_NS_KEYS, "ip"})
            ip = _ipv4(src, ("upstream", "ip"), spec.get("ip", UPSTREAM_WEB))
            self._upstream = SandboxRef(UPSTREAM, _nsref(src, ("upstream",), spec),
                                        {UPSTREAM_NET: ip})
        self.extra_checks = _extra_checks(src, data.get("extra_checks"))

    def sandboxes(self) -> dict[str, SandboxRef]:
        return dict(self._sandboxes)

    def hosts(self) -> dict[str, HostRef]:
        return dict(self._hosts)

    def upstream(self) -> SandboxRef | None:
        return self._upstream


def _extra_checks(src: Source, raw: Any) -> list[dict[str, Any]]:
    """The learner's own checks: declarative kinds only, each validated like a lab's."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise src.error(("extra_checks",), "must be a list of checks ({kind: {params}})")
    out: list[dict[str, Any]] = []
    for i, spec in enumerate(raw):
        try:
            kind, params = parse_spec(spec)
        except InvalidInput as e:
            raise src.error(("extra_checks", i), str(e)) from None
        if kind in NO_CODE:
            raise src.error(("extra_checks", i, kind),
                            f"a {kind} check runs code named in the file: a submission cannot "
                            f"name code to run")
        try:
            library.validate(kind, params)
        except InvalidInput as e:
            field = getattr(e, "param", None)
            raise src.error(("extra_checks", i, kind) + ((field,) if field else ()),
                            str(e)) from None
        out.append({kind: params})
    return out


def describe(target: Any) -> dict[str, Any]:
    """A submission document (YAML-ready data) for any target's sandboxes, hosts and upstream.

    Lets an instructor (or a test, or the benchmark) turn what cnmlab's engine built into the
    file a learner would hand in for the same setup.
    """
    def ns(ref: NsRef) -> dict[str, Any]:
        if ref.name is not None:
            return {"netns": ref.name}
        if ref.pid is not None:
            return {"pid": ref.pid}
        return {"path": ref.path}

    doc: dict[str, Any] = {}
    hosts = target.hosts()
    if hosts:
        doc["hosts"] = {h.name: {**ns(h.ns), **({"public_ip": h.public_ip} if h.public_ip
                                                 else {})} for h in hosts.values()}
    doc["sandboxes"] = {s.name: {**ns(s.ns), "addresses": dict(s.addresses),
                                 **({"host": s.host} if s.host else {})}
                        for s in target.sandboxes().values()}
    up = target.upstream()
    if up is not None:
        doc["upstream"] = {**ns(up.ns), "ip": up.ip()}
    return doc
