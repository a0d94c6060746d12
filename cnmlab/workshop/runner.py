"""Running a lab: one instance of a lab file, built by the engine and checked by the checks.

    run = LabRun(labfile.get("02-default-bridge"))
    run.start()                       # builds the topology as lab "lab02"
    run.show(run.current_step)        # the step's text and task
    results = run.check()             # the current step's checks (CheckResult list)
    print(run.hint())                 # the next hint, one at a time, remembered
    run.solve("attach-c1")            # the solutions of every step up to this one
    run.stop()

The running lab's own bookkeeping (which setups ran, which solutions were applied) lives in
the engine's state file, so the CLI, the TUI and tests can all drive the same running lab.
This sits above both the engine and the checks, which is why it is not inside the engine.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from cnmlab import state, topofile
from cnmlab.checks import diff, probes, scenario
from cnmlab.checks.api import CheckResult, Target
from cnmlab.checks.kinds import run_check, run_checks
from cnmlab.checks.targets import EngineTarget
from cnmlab.errors import CnmError, InvalidInput, NotRootError, ObjectNotFound
from cnmlab.kernel import features, nsexec
from cnmlab.lab import Lab, ns_name, teardown
from cnmlab.workshop import labdocker
from cnmlab.workshop.labfile import NS_TEMPLATE, Action, LabDef, Step
from cnmlab.workshop.progress import Progress


class StepError(CnmError):
    """An action of a step (setup, solution, cleanup) failed."""


@dataclass
class Hint:
    number: int  # 1-based
    total: int
    text: str

    def __str__(self) -> str:
        return f"hint {self.number}/{self.total}: {self.text}"


class LabRun:
    """One running instance of a lab (the engine lab ``instance_name``, default ``lab01``...)."""

    def __init__(self, labdef: LabDef, instance_name: str | None = None,
                 progress: Progress | None = None) -> None:
        self.labdef = labdef
        self.name = instance_name or labdef.default_name
        state.check_lab_name(self.name)
        self.progress = progress or Progress()
        self.lab: Lab | None = None
        self.why: dict[str, str | None] = {}  # step id -> the lab's explanation of its last failure

    # ---- lifecycle -----------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.lab is not None or state.exists(self.name)

    def _attach(self) -> Lab:
        if self.lab is None:
            if not state.exists(self.name):
                raise ObjectNotFound(f"lab {self.labdef.id} is not running (as {self.name}): "
                                     f"'cnmlab lab start {self.labdef.id}' first")
            self.lab = Lab.open(self.name)
        else:
            # another process (CLI, TUI) may have changed it since
            try:
                self.lab.refresh()
            except ObjectNotFound:
                self.lab.close()
                self.lab = None
                return self._attach()
        return self.lab

    def start(self, resume: bool = False) -> "LabRun":
        """Build the topology and run the lab's setup and the first step's setup.

        ``resume``: also re-apply the solutions of the steps already passed (progress file),
        so the learner continues where they left off.
        """
        if os.geteuid() != 0:
            raise NotRootError("labs need root to create namespaces: run cnmlab with sudo")
        features.require(self.labdef.needs, f"lab {self.labdef.id}")
        with state.locked(self.name):  # nobody acts on the lab before it is fully up
            lab = Lab(self.name)
            try:
                with lab.locked():
                    topofile.build(self.labdef.topology, lab)
                    self.lab = lab
                    if self.labdef.docker is not None:
                        labdocker.start(lab, self.labdef.docker.host, self.name)
                    self._save_run({"lab_id": self.labdef.id, "setup_done": []})
                    self._apply(self.labdef.setup)
                    passed = (set(self.progress.lab(self.labdef.id)["passed"]) if resume
                              else set())
                    upto = None
                    for s in self.labdef.steps:
                        if s.id not in passed:
                            break
                        upto = s
                    if upto is not None:
                        self.solve(upto)
                    self._enter(self.current_step or self.labdef.steps[0])
            except BaseException:
                labdocker.stop(self.name)  # its dockerd, if it got that far
                lab.down()
                self.lab = None
                if self.labdef.docker is not None:
                    labdocker.forget_plugins()
                raise
        return self

    def stop(self) -> None:
        """Tear the lab down (every namespace it made, and its state file; its dockerd and
        scratch folder, for a lab run against real Docker)."""
        labdocker.stop(self.name)
        if self.lab is not None:
            self.lab.down()
            self.lab = None
        elif state.exists(self.name):
            Lab.open(self.name).down()
        else:
            teardown(self.name, None)
        if self.labdef.docker is not None:
            labdocker.forget_plugins()

    def reset(self) -> "LabRun":
        """Down and up again, from step 1: the lab's progress is cleared."""
        with state.locked(self.name):
            self.stop()
            self.progress.clear(self.labdef.id)
            return self.start()

    def reset_step(self, step: "str | int | Step") -> "LabRun":
        """Rebuild the lab as it was when ``step`` began: down, up, the solutions of the steps
        before it; this step and the later ones count as not passed any more."""
        s = self.labdef.step(step)
        self.stop()
        self.progress.unpass_from(self.labdef.id, [x.id for x in self.labdef.steps[s.index:]])
        self.start()
        if s.index > 0:
            self.solve(self.labdef.steps[s.index - 1])
        self._enter(s)
        return self

    def explain(self, step: "str | int | Step", results: list[Any]) -> str | None:
        """The lab's own explanation of a failed step: the ``say`` of the first ``diagnose``
        item whose check fails (``{observed}`` is filled from that check), else None."""
        s = self.labdef.step(step)
        if all(r.ok for r in results) or not s.diagnose:
            return None
        target = self.target()
        for item in s.diagnose:
            r = run_check(target, self._render_params(item["check"]))
            if not r.ok:
                return (self.render(item["say"]).strip().replace("{observed}", r.observed)
                        .replace("{reason}", r.reason))
        return None

    # ---- the run's own bookkeeping, kept in the engine's state file -----------------------
    def _run_info(self) -> dict[str, Any]:
        return self.lab.state.extra.setdefault("labrun", {"lab_id": self.labdef.id,
                                                          "setup_done": []})

    def _save_run(self, info: dict[str, Any]) -> None:
        with self.lab.locked():
            self.lab.state.extra["labrun"] = info
            self.lab._save()

    def _enter(self, step: Step) -> None:
        """Run a step's setup once, when the step is first checked or solved.

        Under the lab's lock: a check in the workshop app and one on the command line at the
        same moment must not both run the setup. A step that needs a kernel feature this
        machine lacks (an 802.1Q trunk) says so in one line, pointing to the full-kernel VM,
        instead of failing half-way through.
        """
        if step.needs:
            features.require(step.needs, f"step {step.index + 1} ({step.id}) of lab "
                                         f"{self.labdef.id}")
        with self._attach().locked():
            info = self._run_info()
            if step.id in info["setup_done"]:
                return
            self._apply(step.setup)
            info = self._run_info()
            info["setup_done"].append(step.id)
            self._save_run(info)

    # ---- steps ---------------------------------------------------------------------------
    @property
    def passed(self) -> list[str]:
        return self.progress.lab(self.labdef.id)["passed"]

    @property
    def current_step(self) -> Step | None:
        """The first step whose checks have not passed (None: the lab is done)."""
        done = set(self.passed)
        for s in self.labdef.steps:
            if s.id not in done:
                return s
        return None

    def render(self, text: str) -> str:
        """Fill ``{ns:NAME}`` with the real namespace name and ``{lab}`` with the lab name."""

        def ns(m: re.Match[str]) -> str:
            name = m.group(1)
            if self.lab is not None:
                try:
                    return self.lab.netns_of(name)
                except CnmError:
                    pass
            return ns_name(self.name, name)

        text = NS_TEMPLATE.sub(ns, text).replace("{lab}", self.name)
        if "{docker_host}" in text or "{workdir}" in text or "{labdir}" in text:
            text = (text.replace("{docker_host}", labdocker.docker_host(self.name))
                    .replace("{workdir}", labdocker.work_folder(self.name))
                    .replace("{labdir}", self.labdef.path))
        return text

    def _render_params(self, value: Any) -> Any:
        """A check's parameters with the templates filled in (``{lab}``: a plugin's name)."""
        if isinstance(value, str):
            return self.render(value)
        if isinstance(value, list):
            return [self._render_params(v) for v in value]
        if isinstance(value, dict):
            return {k: self._render_params(v) for k, v in value.items()}
        return value

    def target(self) -> Target:
        """What the checks probe: the engine's lab, plus Docker's containers if it runs one."""
        lab = self._attach()
        if self.labdef.docker is not None:
            return labdocker.target(lab, self.labdef.docker, self.name)
        return EngineTarget(lab)

    def show(self, step: "str | int | Step | None" = None) -> dict[str, Any]:
        s = self._step(step)
        if s is None:
            return {"done": True, "lab": self.labdef.id}
        return {"lab": self.labdef.id, "step": s.id, "number": s.index + 1,
                "of": len(self.labdef.steps), "title": s.title, "concept": s.concept,
                "text": self.render(s.text), "task": self.render(s.task),
                "hints_total": len(s.hints),
                "hints_shown": self.progress.lab(self.labdef.id)["hints"].get(s.id, 0),
                "passed": s.id in self.passed, "where": list(s.where)}

    def _step(self, step: "str | int | Step | None") -> Step | None:
        return self.current_step if step is None else self.labdef.step(step)

    def check(self, step: "str | int | Step | None" = None) -> list[CheckResult]:
        """Run a step's checks (default: the current step); a full pass is recorded."""
        s = self._step(step)
        if s is None:
            s = self.labdef.steps[-1]
        self._enter(s)
        results = run_checks(self.target(), self._render_params(s.checks))
        ok = all(r.ok for r in results)
        if ok or s.id in self.passed:
            self.progress.mark(self.labdef.id, s.id, ok)
        self.why[s.id] = None if ok else self.explain(s, results)
        return results

    def docker_diff(self) -> diff.DiffResult:
        """What would Docker have built here? The lab's host next to real Docker 20.10.

        The lab names a shipped scenario (``docker_diff``) whose containers are its sandboxes;
        the scenario runs on a throwaway dockerd (5-10 s) and the two kernel states are
        compared as ``cnmlab diff --against`` does. Nothing of the learner's lab is changed.
        """
        if self.labdef.docker_diff is None:
            raise InvalidInput(f"lab {self.labdef.id} names no Docker scenario to compare with "
                               f"(docker_diff in its lab.yaml); 'cnmlab diff --list' shows "
                               f"the shipped ones")
        name, host = self.labdef.docker_diff
        return diff.run_against_lab(scenario.load(name), self._attach(), host)

    def hint(self, step: "str | int | Step | None" = None) -> Hint | None:
        """The next hint of a step (default: the current one), one per call; None: no more."""
        s = self._step(step)
        if s is None or not s.hints:
            return None
        shown = self.progress.lab(self.labdef.id)["hints"].get(s.id, 0)
        if shown >= len(s.hints):
            return Hint(len(s.hints), len(s.hints), self.render(s.hints[-1]))
        n = self.progress.hint_shown(self.labdef.id, s.id)
        return Hint(n, len(s.hints), self.render(s.hints[n - 1]))

    def hints_shown(self, step: "str | int | Step | None" = None) -> list[Hint]:
        s = self._step(step)
        if s is None:
            return []
        n = self.progress.lab(self.labdef.id)["hints"].get(s.id, 0)
        return [Hint(i + 1, len(s.hints), self.render(h)) for i, h in enumerate(s.hints[:n])]

    def solution(self, step: "str | int | Step | None" = None) -> list[str]:
        """The step's solution as a learner would type it."""
        s = self._step(step)
        return [a.describe(self.render) for a in (s.solution if s else [])]

    def solve(self, upto_step: "str | int | Step | None" = None) -> list[Step]:
        """Apply the solutions of every step up to and including ``upto_step`` (default:
        the current step), skipping steps already recorded as applied in this run."""
        target = self._step(upto_step)
        if target is None:
            return []
        solved = []
        with self._attach().locked():  # one solve at a time, each on the latest model
            for s in self.labdef.steps[:target.index + 1]:
                info = self._run_info()
                if s.id in info.get("solved", []):
                    continue
                self._enter(s)
                self._apply(s.solution)
                info = self._run_info()
                info.setdefault("solved", []).append(s.id)
                self._save_run(info)
                self._apply(s.cleanup)
                solved.append(s)
        return solved

    # ---- actions -------------------------------------------------------------------------
    def _apply(self, actions: list[Action]) -> None:
        for a in actions:
            self.apply_action(a)

    def apply_action(self, action: "Action | dict[str, Any]") -> None:
        raw = action.raw if isinstance(action, Action) else action
        lab = self._attach()
        if "sh" in raw:
            ns = lab.netns_of(raw["in"])
            script = self.render(raw["sh"])
            try:
                proc = subprocess.run(nsexec.shell_argv(ns, ["bash", "-e", "-o", "pipefail",
                                                             "-c", script]),
                                      capture_output=True, text=True, timeout=60,
                                      env=_action_env())
            except subprocess.TimeoutExpired:
                raise StepError(f"in {raw['in']}: no answer after 60 s: {script.strip()}") from None
            if proc.returncode != 0:
                msg = (proc.stderr or proc.stdout).strip().splitlines()
                raise StepError(f"in {raw['in']}: {script.strip().splitlines()[0]}... failed: "
                                f"{msg[-1] if msg else proc.returncode}")
            return
        host = lab.host(raw["host"])
        op = raw["engine"]
        kw = {k: v for k, v in raw.items() if k not in ("engine", "host", "note")}
        if op == "network_create":
            host.network_create(kw.pop("name"), **kw)
        elif op == "network_rm":
            host.network_rm(kw["name"])
        elif op == "run":
            name = kw.pop("name")
            host.run(name, kw.pop("network", "bridge"), **kw)
            self._wait_resolver(name)
        elif op == "rm":
            host.rm(kw.get("sandbox") or kw["name"])
        elif op == "connect":
            host.connect(kw["network"], kw["sandbox"], ip=kw.get("ip"),
                         aliases=kw.get("aliases") or ())
            self._wait_resolver(kw["sandbox"])
        elif op == "disconnect":
            host.disconnect(kw["network"], kw["sandbox"])
        elif op == "agent_stop":  # the host stops following the control plane
            lab.stop_agent(host.name)
        elif op == "agent_start":  # ... and follows it again: reconcile, then watch
            lab.restart_agent(host.name)
            lab.converge()
        elif op == "service_create" and kw.get("publish"):  # swarm-wide: the routing mesh
            (spec,) = kw["publish"]  # the lab file's check allows one
            lab.service_create(kw["name"], replicas=int(kw.get("replicas", 1)), publish=spec)
        elif op in ("service_scale", "service_rm") and kw["name"] in lab.mesh_services():
            if op == "service_scale":
                lab.service_scale(kw["name"], int(kw["replicas"]))
            else:
                lab.service_rm(kw["name"])
        elif op == "service_create":
            svc = host.service_create(kw.pop("name"), kw.pop("network"), **kw)
            # the resolver follows the new names in every sandbox of the network (a slow
            # machine, such as the VM's emulated CPU, may still be re-reading the state)
            for sb in host.sandboxes():
                if any(r.network == svc.network for r in sb.model.endpoints):
                    self._wait_resolver(sb.name)
        elif op == "service_scale":
            host.service_scale(kw["name"], int(kw["replicas"]))
        elif op == "service_rm":
            host.service_rm(kw["name"])
        else:  # the schema already refused it
            raise InvalidInput(f"unknown engine action {op!r}")

    def _wait_resolver(self, sandbox: str, timeout: float = 3.0) -> None:
        """After a join, wait until the embedded DNS answers in the sandbox (if it has one).

        The engine nudges a running resolver asynchronously; a solution followed at once by a
        dns check (CI, ``lab solve`` then ``lab check``) must not race it.
        """
        sb = self.lab.sandbox(sandbox).model
        if not sb.dns or not sb.netns:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                probes.dns_query(sb.netns, sandbox, "127.0.0.11", timeout=0.2)
                return
            except probes.DnsNameError:
                return  # it answers
            except CnmError:
                time.sleep(0.05)


def _action_env() -> dict[str, str]:
    """A shell action's environment: the ``cnmlab`` it calls is the one running this lab
    (its interpreter's folder first on PATH), not whichever is installed elsewhere."""
    env = dict(os.environ)
    here = os.path.dirname(sys.executable)
    env["PATH"] = f"{here}{os.pathsep}{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    return env


def running_instances(labdef: LabDef) -> list[str]:
    """Names of running engine labs that are instances of this lab."""
    out = []
    for name in state.names():
        try:
            st = state.load(name)
        except (CnmError, TypeError, ValueError):  # gone meanwhile, or another version's state file
            continue
        if st.extra.get("labrun", {}).get("lab_id") == labdef.id:
            out.append(name)
    return out
