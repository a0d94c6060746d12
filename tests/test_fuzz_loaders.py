"""Fuzzing the loaders: every bad input is a one-line error (a ``CnmError``), never a traceback.

Three loaders take files a user or a crash may have damaged: topology files (``cnmlab up``),
lab files (the workshop) and lab state files (/run/cnmlab). Each fuzz test starts from real,
valid documents and mutates them (a subtree replaced by a random value, a key removed or
added, a few times over), so that most inputs are *almost* right: they get past the first
checks and reach the code that trusts the types. The inputs first found by hand are pinned as
explicit examples. The runs are bounded (``max_examples``) and derandomised, so the suite stays
fast and a failure is reproducible.
"""
from __future__ import annotations

import copy
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cnmlab import state, topofile, yamlsrc
from cnmlab.errors import CnmError
from cnmlab.kernel import rundir
from cnmlab.workshop import labfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUZZ = settings(max_examples=250, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Values worth trying in every slot: right-looking strings of the wrong kind, edge numbers.
STRINGS = ["", "bridge", "host", "none", "null", "macvlan", "iptables", "manual", "frontend",
           "web", "h1", "upstream", "10.10.0.0/24", "10.10.0.5", "10.10.0.0/33", "300.1.1.1",
           "172.17.0.0/16", "8080:80", "8080:80/udp", "80", "0:0", "x" * 40, "../../etc", "a/b",
           "true", "host:h1", "docker0", "eth0", "br-abcdefghijklmnop", "{ns:web}", "lab01",
           "com.docker.network.driver.mtu"]
KEYS = ["name", "hosts", "networks", "network", "sandboxes", "publish", "aliases", "ip",
        "subnet", "gateway", "ip_range", "driver", "options", "icc", "internal", "masquerade",
        "mtu", "bridge_name", "default_bridge", "bip", "firewall", "description", "id", "title",
        "steps", "text", "task", "checks", "solution", "setup", "cleanup", "hints", "engine",
        "sh", "in", "host", "sandbox", "from", "to", "reachable", "isolated", "matrix",
        "endpoints", "proxies", "extra", "upstream", "namespaces", "ports", "host_port",
        "container_port", "pool_id", "created", "labrun", "dns_pid", "bogus"]
SCALARS = (st.none() | st.booleans() | st.integers(-3, 70000) | st.sampled_from(STRINGS)
           | st.text(max_size=8) | st.floats(allow_nan=False, allow_infinity=False, width=16))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), inner,
                                        max_size=3), max_leaves=6)


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, path + (i,))
    return out


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        node = node[p]
    return node


@st.composite
def mutated(draw: Any, seeds: list[Any]) -> Any:
    """A seed document with one to three random edits."""
    doc = copy.deepcopy(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(doc)))
        op = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        target = _get(doc, path)
        if op == "add" and isinstance(target, dict):
            target[draw(st.sampled_from(KEYS))] = draw(VALUES)
        elif op == "add" and isinstance(target, list):
            target.append(draw(VALUES))
        elif op == "delete" and path:
            parent = _get(doc, path[:-1])
            del parent[path[-1]]
        elif path:
            _get(doc, path[:-1])[path[-1]] = draw(VALUES)
        else:
            doc = draw(VALUES)
    return doc


def one_line_error(fn: Any) -> str | None:
    """Run a loader; a CnmError must be one non-empty line. Anything else propagates."""
    try:
        fn()
    except CnmError as e:
        msg = str(e)
        assert msg.strip() and "\n" not in msg, f"not a one-line error: {msg!r}"
        return msg
    return None


# ---- topology files ------------------------------------------------------------------------

def _yaml(path: str) -> Any:
    with open(path) as f:
        return yaml.safe_load(f)


TOPOLOGIES = [_yaml(os.path.join(ROOT, "examples", "two-networks.yaml"))] + [
    {"name": "fuzz", **_yaml(p)["topology"]}
    for p in sorted(glob.glob(os.path.join(ROOT, "labs", "*", "lab.yaml")))]

# found by hand: each one used to end `cnmlab up` with a traceback
HAND_TOPOLOGIES = {
    "publish-int": "hosts:\n  h1:\n    sandboxes:\n      web: {publish: 8080}\n",
    "aliases-int": "hosts:\n  h1:\n    sandboxes:\n      web: {aliases: 5}\n",
    "networks-empty": "hosts:\n  h1:\n    sandboxes:\n      web: {networks: []}\n",
    "options-int": "hosts:\n  h1:\n    networks:\n      n1: {options: 5}\n",
}


def _parse_topology(text: str) -> None:
    topofile.parse(yamlsrc.parse(text, "fuzz.yaml"))


@pytest.mark.parametrize("case", sorted(HAND_TOPOLOGIES))
def test_hand_found_topologies_are_one_line_errors(case):
    msg = one_line_error(lambda: _parse_topology("name: fuzz\n" + HAND_TOPOLOGIES[case]))
    assert msg is not None and msg.startswith("fuzz.yaml:"), msg


@FUZZ
@given(mutated(TOPOLOGIES))
@example({"name": "fuzz", "hosts": {"h1": {"sandboxes": {"web": {"publish": 8080}}}}})
@example({"name": "fuzz", "hosts": {"h1": {"sandboxes": {"web": {"aliases": 5}}}}})
@example({"name": "fuzz", "hosts": {"h1": {"sandboxes": {"web": {"networks": []}}}}})
@example({"name": "fuzz", "hosts": {"h1": {"networks": {"n1": {"options": 5}}}}})
def test_fuzz_topology_files(doc):
    msg = one_line_error(lambda: _parse_topology(yaml.safe_dump(doc)))
    if msg is not None:
        assert msg.startswith("fuzz.yaml:"), f"the error does not name the file: {msg}"


# ---- lab files -----------------------------------------------------------------------------

LAB_FILES = {os.path.dirname(p): _yaml(p)
             for p in sorted(glob.glob(os.path.join(ROOT, "labs", "*", "lab.yaml")))}


@settings(FUZZ, max_examples=100)  # lab files are long: PyYAML alone takes ~0.1 s for one
@given(st.sampled_from(sorted(LAB_FILES)), st.data())
def test_fuzz_lab_files(folder, data):
    doc = data.draw(mutated([LAB_FILES[folder]]))
    text = yaml.safe_dump(doc)
    msg = one_line_error(lambda: labfile.parse_lab(yamlsrc.parse(text, "lab.yaml"), folder))
    if msg is not None:
        assert msg.startswith("lab.yaml:"), f"the error does not name the file: {msg}"


# ---- state files ---------------------------------------------------------------------------

def _saved_state() -> dict[str, Any]:
    """A state file as the engine writes it, for a lab with every kind of object."""
    from cnmlab.model import (Endpoint, Host, LabState, Network, PortMapping, Sandbox)

    ep1 = Endpoint(id="e1", name="web", network="front", ip="10.10.1.2/24",
                   mac="02:42:0a:0a:01:02", host_ifname="veth1234567", ifname="eth0",
                   sandbox="web", aliases=["www"], ports=[PortMapping(8080, 80)],
                   driver_data={"src_ns": "cnm-fuzz.web"})
    ep2 = Endpoint(id="e2", name="db", network="bridge", ip="172.17.0.2/16", sandbox="db")
    front = Network(id="n1", name="front", driver="bridge", subnet="10.10.1.0/24",
                    gateway="10.10.1.1", pool_id="LocalDefault/10.10.1.0/24",
                    options={"com.docker.network.bridge.enable_icc": "true"},
                    device="br-0123456789ab", created=3, endpoints={"e1": ep1})
    bridge = Network(id="n2", name="bridge", driver="bridge", subnet="172.17.0.0/16",
                     gateway="172.17.0.1", pool_id="LocalDefault/172.17.0.0/16",
                     device="docker0", created=2, endpoints={"e2": ep2})
    none = Network(id="n3", name="none", driver="null")
    host = Host(name="h1", netns="cnm-fuzz.h1", public_ip="203.0.113.10",
                networks={"front": front, "bridge": bridge, "none": none},
                sandboxes={"web": Sandbox(id="s1", name="web", netns="cnm-fuzz.web",
                                          endpoints=["front/e1"], dns=True),
                           "db": Sandbox(id="s2", name="db", netns="cnm-fuzz.db",
                                         endpoints=["bridge/e2"])},
                proxies={"tcp/8080": 4242}, next_network=4)
    lab = LabState(name="fuzz", upstream="cnm-fuzz.upstream", hosts={"h1": host},
                   extra={"labrun": {"lab_id": "04-user-defined-networks",
                                     "setup_done": ["user-network"]},
                          "dns_pid": 4243, "dns_pid_start": 99})
    data = json.loads(json.dumps(lab.to_json(), default=vars))
    data.pop("namespaces")
    return data


STATES = [_saved_state()]


class _StateDir:
    """Point the state module at a private scratch folder for the body."""

    def __enter__(self) -> str:
        self.saved = rundir.STATE_DIR
        self.dir = tempfile.mkdtemp(prefix="cnmlab-fuzz-")
        rundir.STATE_DIR = self.dir
        return self.dir

    def __exit__(self, *exc: object) -> None:
        rundir.STATE_DIR = self.saved
        shutil.rmtree(self.dir, ignore_errors=True)


def _load_state(text: str) -> None:
    from cnmlab.lab import Lab

    with _StateDir() as d:
        with open(os.path.join(d, "fuzz.json"), "w") as f:
            f.write(text)
        with open(os.path.join(d, "fuzz.ns"), "w") as f:
            f.write("cnm-fuzz.upstream\ncnm-fuzz.h1\n../../etc/passwd\n")
        loaded = state.load("fuzz")
        assert "../../etc/passwd" not in loaded.namespaces  # never a path to act on
        if os.geteuid() == 0:
            Lab.open("fuzz").close()  # rebuilds every host's IPAM from the model


def test_the_seed_state_loads():
    _load_state(json.dumps(STATES[0]))


@pytest.mark.parametrize("text", [
    json.dumps({**STATES[0], "colour": "blue"}),  # found by hand: an unknown field
    json.dumps({**STATES[0], "hosts": {"h1": {**STATES[0]["hosts"]["h1"], "colour": 1}}}),
    "{", "[]", "null", '{"name": "other"}',
], ids=["unknown-field", "unknown-nested-field", "truncated", "list", "null", "other-name"])
def test_damaged_state_files_are_one_line_errors(text):
    msg = one_line_error(lambda: _load_state(text))
    assert msg is not None and "fuzz.json" in msg and "cnmlab clean --lab fuzz" in msg, msg


@FUZZ
@given(mutated(STATES))
@example({**_saved_state(), "colour": "blue"})
def test_fuzz_state_files(doc):
    msg = one_line_error(lambda: _load_state(json.dumps(doc)))
    if msg is not None:
        assert "fuzz.json" in msg, f"the error does not name the file: {msg}"


# ---- the same, through the command line ------------------------------------------------------

@pytest.mark.kernel
@pytest.mark.parametrize("case", sorted(HAND_TOPOLOGIES))
def test_cnmlab_up_hand_found_inputs(tmp_path, lab_name, case):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    path = tmp_path / "topo.yaml"
    path.write_text(f"name: {lab_name}\n" + HAND_TOPOLOGIES[case])
    r = subprocess.run([sys.executable, "-m", "cnmlab.cli", "up", str(path)],
                       capture_output=True, text=True, timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith(f"cnmlab: {path}:"), lines[0]
    assert not state.exists(lab_name)


@pytest.mark.kernel
def test_cli_on_a_state_file_with_an_unknown_field(lab_name):
    """``inspect``/``down`` refuse it in one line; ``clean --lab`` still removes the lab."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    from cnmlab.lab import Lab

    lab = Lab(lab_name)
    ns = lab.state.upstream
    lab.close()
    path = os.path.join(rundir.STATE_DIR, f"{lab_name}.json")
    with open(path) as f:
        data = json.load(f)
    data["colour"] = "blue"
    with open(path, "w") as f:
        json.dump(data, f)
    try:
        for args in (["inspect", lab_name], ["down", lab_name]):
            r = subprocess.run([sys.executable, "-m", "cnmlab.cli", *args], capture_output=True,
                               text=True, timeout=60)
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 1 and len(lines) == 1, r.stderr
            assert "colour: unknown field" in lines[0] and f"clean --lab {lab_name}" in lines[0]
    finally:
        r = subprocess.run([sys.executable, "-m", "cnmlab.cli", "clean", "--lab", lab_name],
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert ns and ns in r.stdout and not state.exists(lab_name)


# ---- topologies that load must build, or fail in one line (real kernel) ----------------------

SUBNETS = ["10.91.0.0/24", "10.91.0.0/16", "10.91.1.0/24", "172.17.0.0/16", "172.18.0.0/16",
           "192.168.7.0/30", "203.0.113.0/24"]
ADDRS = ["10.91.0.5", "10.91.1.5", "172.18.0.9", "192.168.7.2", "10.91.0.1", "10.91.0.255"]
OPTION_KEYS = ["com.docker.network.bridge.enable_icc", "com.docker.network.driver.mtu",
               "com.docker.network.bridge.name", "com.docker.network.bridge.host_binding_ipv4",
               "com.docker.network.bridge.enable_ip_masquerade", "x.unknown"]


@st.composite
def typed_topologies(draw: Any) -> dict[str, Any]:
    """Well-typed topologies with clashing values: overlapping pools, taken addresses and
    ports, odd MTUs and bridge names; what gets past the loader and must be the engine's to
    refuse in one line."""
    hosts: dict[str, Any] = {}
    for h in draw(st.lists(st.sampled_from(["h1", "h2"]), min_size=1, max_size=2, unique=True)):
        nets: dict[str, Any] = {}
        for n in draw(st.lists(st.sampled_from(["n1", "n2"]), max_size=2, unique=True)):
            nets[n] = draw(st.fixed_dictionaries({}, optional={
                # a fixed list: plugin discovery may find other drivers while the test runs
                "driver": st.sampled_from(["bridge"] * 4 + ["host", "null", "nosuch"]),
                "subnet": st.sampled_from(SUBNETS), "ip_range": st.sampled_from(SUBNETS),
                "gateway": st.sampled_from(ADDRS), "internal": st.booleans(),
                "icc": st.booleans(), "masquerade": st.booleans(),
                "mtu": st.sampled_from([68, 1280, 1500, 9000, 65535]),
                "bridge_name": st.sampled_from(["br-fz", "docker0", "eth0", "lo"]),
                "options": st.dictionaries(st.sampled_from(OPTION_KEYS),
                                           st.sampled_from(["true", "0", "1500", "x", "br-o"]),
                                           max_size=2)}))
        sbs: dict[str, Any] = {}
        for s in draw(st.lists(st.sampled_from(["a", "b", "c"]), max_size=3, unique=True)):
            joined = draw(st.lists(st.sampled_from(list(nets) + ["bridge", "host", "none"]),
                                   min_size=1, max_size=2, unique=True))
            sb: dict[str, Any] = {"networks": joined}
            if draw(st.booleans()):
                sb["publish"] = draw(st.lists(st.sampled_from(
                    ["8080:80", "8080:80/udp", "127.0.0.1:8081:81", "8082:82"]), max_size=2))
            if draw(st.booleans()):
                sb["ip"] = draw(st.sampled_from(ADDRS))
            if draw(st.booleans()):
                sb["aliases"] = draw(st.lists(st.sampled_from(["db", "web", "a"]), max_size=2))
            sbs[f"{h}{s}"] = sb
        host: dict[str, Any] = {"networks": nets, "sandboxes": sbs}
        host.update(draw(st.fixed_dictionaries({}, optional={
            "default_bridge": st.booleans(), "firewall": st.sampled_from(["iptables", "manual"]),
            "bip": st.sampled_from(SUBNETS)})))
        hosts[h] = host
    return {"hosts": hosts}


_builds = iter(range(10**6))


@pytest.mark.kernel
@settings(max_examples=12, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(typed_topologies())
def test_fuzz_topologies_that_load_build_or_fail_in_one_line(doc):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    name = f"fz{os.getpid()}x{next(_builds)}"
    text = yaml.safe_dump({"name": name, **doc})
    try:
        topo = topofile.parse(yamlsrc.parse(text, "fuzz.yaml"))
    except CnmError:
        return  # the loader's errors are fuzzed above
    try:
        lab = topofile.build(topo)
    except CnmError as e:
        assert "\n" not in str(e), str(e)
        assert not state.exists(name), "a failed build left its lab behind"
        return
    lab.down()
