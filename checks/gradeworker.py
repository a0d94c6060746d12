"""The process that runs one learner's checks for the grader (``python -m cnmlab.checks.gradeworker FD``).

The grader (``checks/grading.py``) starts one per learner, in its own session, gives it the
learner's submission target and the checks to run on stdin (a pickle), and reads progress
from the pipe ``FD``: ``("start", tag, index)`` before a check, ``("result", tag, index,
CheckResult)`` after it, ``("end",)`` when all are done. Because a check runs here and not in
the grader, a learner's namespace that makes a check hang (or a check that crashes the
interpreter) costs that learner this process, which the grader kills at the check's deadline
or the learner's budget, and never stalls the rest of the class.
"""
from __future__ import annotations

import os
import pickle
import struct
import sys
from typing import Any, BinaryIO

from cnmlab.checks.api import CheckResult
from cnmlab.checks.kinds import run_check


def send(out: BinaryIO, msg: tuple[Any, ...]) -> None:
    data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(struct.pack("!I", len(data)) + data)
    out.flush()


def run(job: dict[str, Any], out: BinaryIO) -> None:
    target = job["target"]
    for tag, index, spec, label in job["checks"]:
        send(out, ("start", tag, index))
        try:
            r = run_check(target, spec)
        except Exception as e:  # run_check turns check errors into results; this is a last net
            r = CheckResult(label, str(next(iter(spec), "check")), False, "the check to run",
                            "error", f"the check crashed: {type(e).__name__}: {e}")
        r.check = label
        send(out, ("result", tag, index, r))
    send(out, ("end",))


def main(argv: list[str]) -> int:
    fd = int(argv[1])
    job = pickle.load(sys.stdin.buffer)
    with os.fdopen(fd, "wb") as out:
        run(job, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
