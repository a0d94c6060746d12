"""YAML with line numbers, so a bad field is reported as ``FILE:LINE: field.path: problem``.

Every file cnmlab reads may come from someone else (a lab author, a learner's submission), so
the loader refuses, with a one-line ``InvalidInput`` naming the file and line, what PyYAML
would happily build but no consumer can walk: a recursive alias (``hosts: &h {h1: *h}``, a
structure that contains itself and ends in a RecursionError), an alias bomb ("billion laughs":
a few lines of anchors that expand to millions of nodes), nesting deeper than any real file
needs, and files too large to be hand-written.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from cnmlab.errors import InvalidInput, one_line

MAX_BYTES = 2 << 20      # a hand-written lab, topology or submission is a few KiB
MAX_NODES = 100_000      # nodes after alias expansion: what consumers will walk
MAX_DEPTH = 64           # nesting levels


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
        return InvalidInput(one_line(f"{self.path}:{self.line(where)}: "
                                     f"{dotted + ': ' if dotted else ''}{message}"))


class _Loader(yaml.SafeLoader):
    """A SafeLoader that remembers the line of every alias (``*name``) it composes.

    PyYAML hands back the anchored node itself for an alias, whose mark is the anchor's line;
    errors about a value that came through an alias should name the alias's line instead.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.alias_lines: dict[tuple[int, Any], int] = {}

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent) and parent is not None:
            key = id(index) if isinstance(index, yaml.Node) else index
            self.alias_lines[(id(parent), key)] = self.peek_event().start_mark.line + 1
        return super().compose_node(parent, index)


class _Walk:
    """One depth-first pass over the composed node graph (aliases are shared node objects).

    Records the line of every key and item, refuses duplicate keys, and stops at the first
    cycle (an alias inside its own anchor), at ``MAX_DEPTH`` levels and at ``MAX_NODES``
    visited nodes, so its cost is bounded whatever the input.
    """

    def __init__(self, src_path: str, lines: dict[tuple[Any, ...], int],
                 alias_lines: dict[tuple[int, Any], int]) -> None:
        self.src_path = src_path
        self.lines = lines
        self.alias_lines = alias_lines
        self.count = 0
        self.open: set[int] = set()  # ids of the nodes on the current path (cycle detection)

    def fail(self, node: yaml.Node, path: tuple[Any, ...], message: str) -> InvalidInput:
        dotted = ".".join(str(p) for p in path)
        line = self.lines.get(path, node.start_mark.line + 1)
        return InvalidInput(f"{self.src_path}:{line}: "
                            f"{dotted + ': ' if dotted else ''}{message}")

    def walk(self, node: yaml.Node, path: tuple[Any, ...]) -> None:
        self.count += 1
        if self.count > MAX_NODES:
            raise self.fail(node, path[:1], f"the document expands to more than {MAX_NODES} nodes "
                                        f"(an alias bomb?): write it out without nested aliases")
        if len(path) > MAX_DEPTH:
            raise self.fail(node, path, f"nested deeper than {MAX_DEPTH} levels")
        self.lines.setdefault(path, node.start_mark.line + 1)
        if not isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            return
        if id(node) in self.open:
            raise self.fail(node, path, "recursive alias: this value contains itself "
                                        "(an *alias inside its own &anchor)")
        self.open.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                seen: set[Any] = set()
                for key, value in node.value:
                    k = key.value if isinstance(key, yaml.ScalarNode) else repr(key.value)[:40]
                    if k in seen:  # PyYAML silently keeps the last one; an author wants to know
                        dotted = ".".join(str(p) for p in path + (k,))
                        raise InvalidInput(f"{self.src_path}:{key.start_mark.line + 1}: "
                                           f"{dotted}: duplicate key (already defined on line "
                                           f"{self.lines[path + (k,)]})")
                    seen.add(k)
                    self.lines[path + (k,)] = self.alias_lines.get(
                        (id(node), id(key)), key.start_mark.line + 1)
                    self.walk(key, path + (k,)) if not isinstance(key, yaml.ScalarNode) else None
                    self.walk(value, path + (k,))
            else:
                for i, item in enumerate(node.value):
                    self.lines[path + (i,)] = self.alias_lines.get(
                        (id(node), i), item.start_mark.line + 1)
                    self.walk(item, path + (i,))
        finally:
            self.open.discard(id(node))


def _yaml_error(e: yaml.YAMLError, path: str) -> InvalidInput:
    mark = getattr(e, "problem_mark", None)
    line = mark.line + 1 if mark else 1
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return InvalidInput(f"{path}:{line}: malformed YAML: {problem}")


def parse(text: str, path: str) -> Source:
    """Parse once (compose), check the node graph, then construct the data from it."""
    if len(text) > MAX_BYTES:
        raise InvalidInput(f"{path}:1: {len(text)} bytes is too large for a hand-written file "
                           f"(limit {MAX_BYTES})")
    loader = _Loader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as e:
            raise _yaml_error(e, path) from None
        except RecursionError:
            raise InvalidInput(f"{path}:1: malformed YAML: nested too deeply") from None
        src = Source(path, None)
        if node is None:
            return src
        _Walk(path, src.lines, loader.alias_lines).walk(node, ())
        try:
            src.data = loader.construct_document(node)
        except yaml.YAMLError as e:
            raise _yaml_error(e, path) from None
        return src
    finally:
        loader.dispose()


def load(path: str) -> Source:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise InvalidInput(f"{path}: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise InvalidInput(f"{path}:{line}: not UTF-8 text") from None
    return parse(text, path)
