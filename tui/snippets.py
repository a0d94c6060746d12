"""The command blocks of a step's text, ready to paste into a lab shell.

A step's prose shows commands as Markdown code blocks (indented by four spaces, or fenced).
A comment line ``# in NAME`` (``# in the host``, ``# in c1 (...)``) names the lab member the
following lines belong to, so one block can hold a host part and a container part: each part
becomes its own snippet, and pasting it switches the terminal to that member first.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_IN = re.compile(r"^#\s*in\s+(?:the\s+)?([A-Za-z0-9_.-]+)", re.IGNORECASE)


@dataclass
class Snippet:
    text: str
    member: str | None = None  # where it should be typed, when the block says


def _blocks(markdown: str) -> list[list[str]]:
    """Code blocks: runs of lines indented by 4+ spaces (blank lines inside kept), fences."""
    out: list[list[str]] = []
    lines = markdown.splitlines()
    i = 0
    prev_blank = True
    while i < len(lines):
        line = lines[i]
        if line.strip().startswith("```"):
            block = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                block.append(lines[i])
                i += 1
            out.append(block)
            i += 1
            prev_blank = True
            continue
        if line.startswith("    ") and line.strip() and prev_blank:
            block = []
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                block.append(lines[i][4:])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            out.append(block)
            prev_blank = False
            continue
        prev_blank = not line.strip()
        i += 1
    return out


def snippets(markdown: str, members: list[str] | None = None) -> list[Snippet]:
    """The pasteable parts of a step's text, in order."""
    known = set(members or [])
    out: list[Snippet] = []
    for block in _blocks(markdown):
        member: str | None = None
        part: list[str] = []

        def flush() -> None:
            body = "\n".join(l.rstrip() for l in part).strip("\n")
            if body.strip():
                out.append(Snippet(body, member))

        for line in block:
            m = _IN.match(line.strip())
            if m and (not known or m.group(1) in known):
                flush()
                part = []
                member = m.group(1)
                continue
            part.append(line)
        flush()
    return out
