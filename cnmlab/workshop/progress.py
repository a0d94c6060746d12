"""What a learner has done, kept between runs: the steps passed and the hints shown, per lab.

One JSON file (``$CNMLAB_PROGRESS`` or ``~/.local/share/cnmlab/progress.json``), changed under
an exclusive lock and replaced atomically, so the CLI, the TUI and tests can share it.
"""
from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def progress_path() -> str:
    return os.environ.get("CNMLAB_PROGRESS") or os.path.join(
        os.path.expanduser("~"), ".local", "share", "cnmlab", "progress.json")


class Progress:
    """``{"labs": {LAB_ID: {"passed": [step ids], "hints": {step id: n shown}}}}``."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path or progress_path()

    def _read(self) -> dict[str, Any]:
        try:
            with open(self.path) as f:
                data = json.load(f)
            return data if isinstance(data, dict) else {"labs": {}}
        except (OSError, ValueError):
            return {"labs": {}}

    @contextmanager
    def _edit(self) -> Iterator[dict[str, Any]]:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with open(self.path + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._read()
            data.setdefault("labs", {})
            yield data
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)

    def lab(self, lab_id: str) -> dict[str, Any]:
        entry = self._read().get("labs", {}).get(lab_id, {})
        return {"passed": list(entry.get("passed", [])), "hints": dict(entry.get("hints", {}))}

    def mark(self, lab_id: str, step_id: str, passed: bool) -> None:
        with self._edit() as data:
            entry = data["labs"].setdefault(lab_id, {"passed": [], "hints": {}})
            have = set(entry.setdefault("passed", []))
            if passed and step_id not in have:
                entry["passed"].append(step_id)
            elif not passed and step_id in have:
                entry["passed"].remove(step_id)

    def hint_shown(self, lab_id: str, step_id: str) -> int:
        """Count one more hint shown for a step; returns the new count."""
        with self._edit() as data:
            entry = data["labs"].setdefault(lab_id, {"passed": [], "hints": {}})
            hints = entry.setdefault("hints", {})
            hints[step_id] = hints.get(step_id, 0) + 1
            return hints[step_id]

    def clear(self, lab_id: str) -> None:
        with self._edit() as data:
            data["labs"].pop(lab_id, None)
