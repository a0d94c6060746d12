"""What a learner has done, kept between runs: the steps passed and the hints shown, per lab.

One JSON file (``$CNMLAB_PROGRESS`` or ``~/.local/share/cnmlab/progress.json``), changed under
an exclusive lock and replaced atomically, so the CLI, the TUI and tests can share it.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cnmlab.state import progress_path


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

    def unpass_from(self, lab_id: str, step_ids: list[str]) -> None:
        """Forget these steps' passes (a step reset); hints shown are kept."""
        with self._edit() as data:
            entry = data["labs"].setdefault(lab_id, {"passed": [], "hints": {}})
            entry["passed"] = [s for s in entry.get("passed", []) if s not in step_ids]

    # ---- the commands typed in the lab's shells, kept next to the progress file -----------
    def history_dir(self, lab_id: str) -> str:
        base = os.path.splitext(self.path)[0]
        return os.path.join(base + ".history", re.sub(r"[^A-Za-z0-9_.-]", "_", lab_id))

    def history_file(self, lab_id: str, member: str) -> str:
        """bash's HISTFILE for the lab's shells in ``member`` (appended after each command)."""
        return os.path.join(self.history_dir(lab_id),
                            re.sub(r"[^A-Za-z0-9_.-]", "_", member) + ".bash_history")

    def history(self, lab_id: str) -> dict[str, list[str]]:
        """member -> the commands typed there, oldest first (bash's timestamp lines dropped)."""
        folder = self.history_dir(lab_id)
        out: dict[str, list[str]] = {}
        try:
            files = sorted(os.listdir(folder))
        except OSError:
            return out
        for name in files:
            if not name.endswith(".bash_history"):
                continue
            try:
                with open(os.path.join(folder, name), errors="replace") as f:
                    lines = [l.rstrip("\n") for l in f if l.strip() and not re.match(r"^#\d+$", l)]
            except OSError:
                continue
            out[name[:-len(".bash_history")]] = lines
        return out
