"""The lab list: where labs live and what each is called, read fast, without validation.

The full, validated ``LabDef`` (``labfile.load``: schema, checks, topology) takes ~100 ms a lab
with the pure-Python YAML parser its line numbers need, and pulls in the checks; the lab list
only needs ids, titles and steps, which libyaml reads in milliseconds. So the list is read here
and a lab is loaded in full only when a learner opens it.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from cnmlab.errors import InvalidInput

LAB_FILE = "lab.yaml"
LABS_PATH_ENV = "CNMLAB_LABS_PATH"


@dataclass
class StepInfo:
    id: str
    title: str


@dataclass
class LabPreview:
    """What the lab list shows, read straight from ``lab.yaml``."""

    id: str
    title: str
    summary: str
    needs: list[str]
    steps: list[StepInfo]
    default_name: str
    path: str


def labs_dir() -> str:
    """The shipped labs (package data ``cnmlab.labs_data``), or ``$CNMLAB_LABS`` instead."""
    env = os.environ.get("CNMLAB_LABS")
    if env:
        return env
    return str(resources.files("cnmlab.labs_data"))


def default_lab_name(lab_id: str) -> str:
    """``01-sandboxes-by-hand`` -> ``lab01``; otherwise the id made into a valid lab name."""
    m = re.match(r"^(\d+)", lab_id)
    if m:
        return f"lab{m.group(1)}"
    return re.sub(r"[^a-z0-9_-]", "-", lab_id.lower())[:32]


def lab_folders(root: str | None = None) -> list[str]:
    """Every lab folder (one holding ``lab.yaml``), shipped labs first, then the user's.

    The user's folders come from ``$CNMLAB_LABS_PATH`` (``:``-separated; ``cnmlab --labs-dir
    DIR`` adds to it, so the TUI and child processes see the same labs). An explicit ``root``
    is searched alone. Kept in one function so every lister (CLI, TUI, tests) agrees.
    """
    roots = [("", root or labs_dir())]
    if not root:
        roots += [(f"{LABS_PATH_ENV}: ", p)
                  for p in os.environ.get(LABS_PATH_ENV, "").split(os.pathsep) if p]
    out = []
    for where, r in roots:
        try:
            entries = sorted(os.listdir(r))
        except OSError as e:
            raise InvalidInput(f"{where}{r}: {e.strerror}") from None
        out += [os.path.join(r, e) for e in entries
                if os.path.isfile(os.path.join(r, e, LAB_FILE))]
    return out


def previews(root: str | None = None,
             broken: Callable[[str], Any] | None = None) -> list[Any]:
    """A ``LabPreview`` of every lab. A lab file the quick read cannot take goes to
    ``broken(folder)`` (the full loader, which says exactly what is wrong, or returns the lab
    when only the quick read was confused); without ``broken`` it is a one-line error."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    out: list[Any] = []
    for folder in lab_folders(root):
        try:
            with open(os.path.join(folder, LAB_FILE)) as f:
                data = yaml.load(f, Loader=loader)
            out.append(LabPreview(
                id=str(data["id"]), title=str(data.get("title", data["id"])),
                summary=str(data.get("summary") or ""), needs=list(data.get("needs") or []),
                steps=[StepInfo(str(s["id"]), str(s.get("title", s["id"])))
                       for s in data.get("steps") or []],
                default_name=data.get("name") or default_lab_name(str(data["id"])),
                path=folder))
        except Exception as e:  # a broken file
            if broken is None:
                raise InvalidInput(f"{os.path.join(folder, LAB_FILE)}: cannot read it "
                                   f"({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                                   ) from None
            out.append(broken(folder))
    return out
