"""YAML with line numbers, so a bad field is reported as ``FILE:LINE: field.path: problem``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from cnmlab.errors import InvalidInput


@dataclass
class Source:
    """A parsed YAML document plus the line of every mapping key and list item."""

    path: str
    data: Any
    lines: dict[tuple[Any, ...], int] = field(default_factory=dict)

    def line(self, where: tuple[Any, ...]) -> int:
        while where and where not in self.lines:
            where = where[:-1]
        return self.lines.get(where, 1)

    def error(self, where: tuple[Any, ...], message: str) -> InvalidInput:
        dotted = ".".join(str(p) for p in where)
        return InvalidInput(f"{self.path}:{self.line(where)}: {dotted + ': ' if dotted else ''}"
                            f"{message}")


def _walk(node: yaml.Node, path: tuple[Any, ...], lines: dict[tuple[Any, ...], int],
          src_path: str) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key, value in node.value:
            k = key.value
            if k in seen:  # PyYAML silently keeps the last one; a lab author wants to know
                dotted = ".".join(str(p) for p in path + (k,))
                raise InvalidInput(f"{src_path}:{key.start_mark.line + 1}: {dotted}: "
                                   f"duplicate key (already defined on line "
                                   f"{lines[path + (k,)]})")
            seen.add(k)
            lines[path + (k,)] = key.start_mark.line + 1
            _walk(value, path + (k,), lines, src_path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _walk(item, path + (i,), lines, src_path)


def parse(text: str, path: str) -> Source:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InvalidInput(f"{path}:{line}: malformed YAML: {problem}") from None
    src = Source(path, data)
    if node is not None:
        _walk(node, (), src.lines, path)
    return src


def load(path: str) -> Source:
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise InvalidInput(f"{path}: {e.strerror}") from None
    return parse(text, path)
