"""Grading a class: the instructor's assignment run against every learner's submission, bounded.

``grade(assignment, learners)`` loads each submission (a malformed or refused one fails that
learner with its one-line reason; the others are still graded), then runs each learner's
checks in a worker process of their own (``checks/gradeworker.py``), several learners at a
time. The grader watches the clock for every worker:

- a check that runs past its **deadline** is a failed row ("did not finish within N s"); the
  worker is killed and a fresh one carries on with the learner's next check;
- when the learner's **budget** (wall clock for all their checks) runs out, the check running
  then and every check not yet run are failed rows, with that reason;
- a worker that dies in a check (a crash, a kill) fails that check and the next one goes on.

So one learner's hung namespace costs at most their own budget and one of ``jobs`` slots, and
every learner gets exactly one row per assignment check: nothing that did not run is a pass.
The learner's own ``extra_checks`` run after the graded ones, in what is left of the budget,
and are reported apart; they never change the grade.
"""
from __future__ import annotations

import os
import pickle
import selectors
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from cnmlab.checks.api import CheckResult
from cnmlab.checks.assignment import Assignment, GradedCheck, Learner
from cnmlab.checks.conformance import label_of
from cnmlab.checks.submission import SubmissionTarget
from cnmlab.errors import CnmError

GRADED, EXTRA = "graded", "extra"
DEFAULT_JOBS = 8  # learners at a time: checks mostly wait on probe timeouts, not on the CPU
KILL_WAIT = 2.0   # s to wait for a killed worker before leaving it behind


@dataclass
class LearnerGrade:
    """One learner's outcome: one result per assignment check (in order), their own checks
    apart, the points, and why the submission was refused (if it was)."""

    learner: str
    path: str
    results: list[CheckResult]
    extra: list[CheckResult] = field(default_factory=list)
    points: float = 0.0
    max_points: float = 0.0
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and all(r.ok for r in self.results)


def _failed(check: GradedCheck | dict[str, Any], label: str, observed: str,
            reason: str) -> CheckResult:
    spec = check.spec if isinstance(check, GradedCheck) else check
    kind = next(iter(spec), "check")
    return CheckResult(label, kind, False, "the check runs and passes", observed, reason)


def finalize(check: GradedCheck, r: CheckResult) -> CheckResult:
    """The graded form of a result: required checks that were skipped count as failed;
    optional ones are reported but never fail (and are worth nothing)."""
    r.check = check.label
    if check.optional:
        if not r.ok or r.skipped:
            r.ok, r.skipped = True, True
            r.reason = f"optional, not graded: {r.reason or 'did not run'}"
        return r
    if r.skipped:
        r.ok, r.skipped = False, False
        r.reason = f"did not run: {r.reason or 'skipped'}"
    return r


def not_run(check: GradedCheck, why: str) -> CheckResult:
    return finalize(check, _failed(check, check.label, "not run", why))


def score(assignment: Assignment, results: list[CheckResult]) -> float:
    return sum(c.points for c, r in zip(assignment.checks, results)
               if not c.optional and r.ok and not r.skipped)


# ---------------------------------------------------------------------------------------------
# one learner's worker


class _Run:
    """A learner being graded: what is left to run, what came back, the worker running it."""

    def __init__(self, learner: Learner, target: SubmissionTarget, assignment: Assignment,
                 todo: list[tuple[str, int]]) -> None:
        self.learner = learner
        self.target = target
        self.assignment = assignment
        self.todo = todo
        self.results: dict[tuple[str, int], CheckResult] = {}
        self.t0 = 0.0
        self.proc: subprocess.Popen[bytes] | None = None
        self.fd = -1
        self.buf = b""
        self.errfile: Any = None
        self.current: tuple[str, int] | None = None
        self.started = 0.0
        self.ended = False

    # what each item is
    def spec(self, item: tuple[str, int]) -> tuple[dict[str, Any], str, float]:
        tag, i = item
        if tag == GRADED:
            c = self.assignment.checks[i]
            return c.spec, c.label, c.deadline
        spec = self.target.extra_checks[i]
        return spec, extra_label(spec, i), _extra_deadline(self.assignment)

    def fail(self, item: tuple[str, int], observed: str, reason: str) -> None:
        spec, label, _ = self.spec(item)
        self.results[item] = _failed(spec, label, observed, reason)
        if item in self.todo:
            self.todo.remove(item)

    @property
    def budget_end(self) -> float:
        return self.t0 + self.assignment.budget

    def next_wakeup(self) -> float:
        end = self.budget_end
        if self.current is not None:
            end = min(end, self.started + self.spec(self.current)[2])
        return end


def extra_label(spec: dict[str, Any], i: int) -> str:
    return f"{label_of(spec)} (own check #{i + 1})"


def _extra_deadline(assignment: Assignment) -> float:
    return max((c.deadline for c in assignment.checks), default=15.0)


def _worker_env() -> dict[str, str]:
    """The worker imports what this process can: an instructor's ``python:`` check module
    found on our ``sys.path`` (a course folder, a pytest rootdir) must load there too."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in sys.path if p))
    return env


class Grader:
    """Runs many learners' workers at once and enforces every deadline and budget."""

    def __init__(self, assignment: Assignment, jobs: int = DEFAULT_JOBS,
                 on_learner: Callable[[LearnerGrade], None] | None = None) -> None:
        self.assignment = assignment
        self.jobs = max(1, jobs)
        self.on_learner = on_learner
        self.sel = selectors.DefaultSelector()
        self.running: list[_Run] = []
        self.env = _worker_env()

    # ---- workers -------------------------------------------------------------------------
    def _spawn(self, run: _Run) -> None:
        job = {"target": run.target,
               "checks": [(tag, i, *run.spec((tag, i))[:2]) for tag, i in run.todo]}
        r, w = os.pipe()
        run.errfile = tempfile.TemporaryFile()
        try:
            run.proc = subprocess.Popen(
                [sys.executable, "-m", "cnmlab.checks.gradeworker", str(w)],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=run.errfile,
                pass_fds=(w,), start_new_session=True, env=self.env)
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(w)
        run.fd, run.buf, run.ended = r, b"", False
        run.current, run.started = run.todo[0], time.monotonic()
        assert run.proc.stdin is not None
        try:
            run.proc.stdin.write(pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL))
            run.proc.stdin.close()
        except BrokenPipeError:
            pass
        self.sel.register(r, selectors.EVENT_READ, run)

    def _reap(self, run: _Run, kill: bool) -> str:
        """Stop watching the worker (killing its whole session if asked); its exit status."""
        if run.fd >= 0:
            self.sel.unregister(run.fd)
            os.close(run.fd)
            run.fd = -1
        status = ""
        proc, run.proc = run.proc, None
        if proc is not None:
            for attempt in range(2):
                if kill or attempt:  # a worker that closed its pipe but lingers is killed too
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)  # the worker and what it started
                    except ProcessLookupError:
                        pass
                try:
                    code = proc.wait(timeout=KILL_WAIT)
                    status = f"exit code {code}" if code >= 0 else f"signal {-code}"
                    break
                except subprocess.TimeoutExpired:
                    status = "still stuck in the kernel after SIGKILL"
        if run.errfile is not None:
            if not kill and run.todo:
                run.errfile.seek(0)
                tail = run.errfile.read()[-2000:].decode(errors="replace").strip().splitlines()
                if tail:
                    status += f": {tail[-1][:200]}"
            run.errfile.close()
            run.errfile = None
        return status

    def _read(self, run: _Run) -> None:
        try:
            data = os.read(run.fd, 1 << 16)
        except OSError:
            data = b""
        if not data:
            status = self._reap(run, kill=False)
            if run.todo and not run.ended:
                item = run.current or run.todo[0]
                self._lost(run, item, f"the grader's worker died during this check ({status})")
            return
        run.buf += data
        while len(run.buf) >= 4:
            (n,) = struct.unpack("!I", run.buf[:4])
            if len(run.buf) < 4 + n:
                break
            msg = pickle.loads(run.buf[4:4 + n])
            run.buf = run.buf[4 + n:]
            if msg[0] == "start":
                run.current, run.started = (msg[1], msg[2]), time.monotonic()
            elif msg[0] == "result":
                item = (msg[1], msg[2])
                run.results[item] = msg[3]
                if item in run.todo:
                    run.todo.remove(item)
                run.current = None
            elif msg[0] == "end":
                run.ended = True

    def _lost(self, run: _Run, item: tuple[str, int], why: str) -> None:
        """``item`` will never report: fail it, and go on with the rest in a new worker."""
        run.fail(item, "error", why)
        run.current = None
        if run.todo and time.monotonic() < run.budget_end:
            self._spawn(run)

    def _expire(self, run: _Run, now: float) -> None:
        if now >= run.budget_end:
            self._reap(run, kill=True)
            b = f"{run.assignment.budget:g} s"
            if run.current is not None and run.current in run.todo:
                run.fail(run.current, "timeout",
                         f"{run.learner.name}'s time budget of {b} ran out during this check")
            for item in list(run.todo):
                run.fail(item, "not run", f"not run: {run.learner.name}'s time budget of {b} "
                                          f"ran out before it")
            run.current = None
            return
        if run.current is not None:
            _, label, deadline = run.spec(run.current)
            if now >= run.started + deadline:
                self._reap(run, kill=True)
                self._lost(run, run.current, f"did not finish within its deadline of "
                                             f"{deadline:g} s (the worker was stopped)")

    # ---- the class -----------------------------------------------------------------------
    def grade(self, learners: Iterable[Learner],
              selected: dict[str, set[int]] | None = None) -> list[LearnerGrade]:
        """Grade every learner; ``selected`` (learner -> check indexes) limits what runs (the
        others are failed rows: not selected means not run)."""
        out: dict[str, LearnerGrade] = {}
        queue: list[_Run] = []
        order = []
        for lr in learners:
            order.append(lr.name)
            target, refused = self._load(lr)
            if target is None:
                assert refused is not None
                out[lr.name] = refused
                self._done(refused)
                continue
            todo = [(GRADED, i) for i in range(len(self.assignment.checks))
                    if selected is None or i in selected.get(lr.name, set())]
            todo += [(EXTRA, i) for i in range(len(target.extra_checks))]
            queue.append(_Run(lr, target, self.assignment, todo))
        try:
            while queue or self.running:
                while queue and len(self.running) < self.jobs:
                    run = queue.pop(0)
                    run.t0 = time.monotonic()
                    if run.todo:
                        self._spawn(run)
                    self.running.append(run)
                now = time.monotonic()
                wake = min((r.next_wakeup() for r in self.running if r.proc is not None),
                           default=now)
                for key, _ in self.sel.select(max(0.0, wake - now)):
                    self._read(key.data)
                now = time.monotonic()
                for run in list(self.running):
                    if run.proc is not None:
                        self._expire(run, now)
                    if run.proc is None and (run.ended or not run.todo or
                                             now >= run.budget_end):
                        if run.todo:  # the worker is gone with work left and no budget
                            self._expire(run, max(now, run.budget_end))
                        self.running.remove(run)
                        g = self._result(run, selected)
                        out[run.learner.name] = g
                        self._done(g)
                    elif run.proc is None and run.todo:
                        self._spawn(run)  # a worker ended early (e.g. "end" lost): go on
        finally:
            for run in self.running:
                self._reap(run, kill=True)
            self.sel.close()
        return [out[name] for name in order]

    def _load(self, lr: Learner) -> tuple[SubmissionTarget | None, LearnerGrade | None]:
        """The submission, or (when it is refused) a LearnerGrade of failed rows saying why."""
        try:
            return SubmissionTarget(lr.path, learner=lr.name), None
        except CnmError as e:
            why = str(e)
        except Exception as e:  # a bug in the loader must not stop the class
            why = f"{lr.path}: cannot read the submission: {type(e).__name__}: {e}"
        results = [not_run(c, f"not run: the submission was refused: {why}")
                   for c in self.assignment.checks]
        return None, LearnerGrade(lr.name, lr.path, results, [], 0.0,
                                  self.assignment.max_points, error=why)

    def _result(self, run: _Run, selected: dict[str, set[int]] | None) -> LearnerGrade:
        results = []
        for i, c in enumerate(self.assignment.checks):
            r = run.results.get((GRADED, i))
            if r is None:
                chosen = selected is None or i in selected.get(run.learner.name, set())
                results.append(not_run(c, "not run: not selected" if not chosen
                                       else "not run: the grader stopped before it"))
            else:
                results.append(finalize(c, r))
        extra = [run.results.get((EXTRA, i)) or _failed(
            spec, extra_label(spec, i), "not run", "not run: the learner's budget ran out")
            for i, spec in enumerate(run.target.extra_checks)]
        return LearnerGrade(run.learner.name, run.learner.path, results, extra,
                            score(self.assignment, results), self.assignment.max_points,
                            seconds=time.monotonic() - run.t0)

    def _done(self, g: LearnerGrade) -> None:
        if self.on_learner is not None:
            self.on_learner(g)


def grade(assignment: Assignment, learners: Iterable[Learner], jobs: int = DEFAULT_JOBS,
          selected: dict[str, set[int]] | None = None,
          on_learner: Callable[[LearnerGrade], None] | None = None) -> list[LearnerGrade]:
    """Grade every learner against the assignment (see the module docstring)."""
    return Grader(assignment, jobs, on_learner).grade(learners, selected)
