"""The shared YAML loader refuses what no consumer can walk, with one line naming file:line.

Reproduced before the fix: ``hosts: &h {h1: *h}`` in a topology file ended ``cnmlab up`` with a
RecursionError traceback. Every loader (topology, lab, profile, submission, assignment) goes
through ``cnmlab.yamlsrc``, so these limits protect all of them.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from cnmlab import yamlsrc
from cnmlab.errors import InvalidInput

BOMB = "".join(
    f"{n}: &{n} [{', '.join(['*' + p] * 9) if p else ', '.join(['x'] * 9)}]\n"
    for p, n in zip(["", "a", "b", "c", "d", "e", "f"], ["a", "b", "c", "d", "e", "f", "g"]))


@pytest.mark.parametrize("text, where, what", [
    ("name: x\nhosts: &h {h1: *h}\n", "t.yaml:2: hosts.h1:", "recursive alias"),
    ("a: &a\n  - b\n  - *a\n", "t.yaml:3: a.1:", "recursive alias"),
    ("a: &a {b: {c: *a}}\n", "t.yaml:1: a.b.c:", "recursive alias"),
    (BOMB, "t.yaml:6: f:", "expands to more than 100000 nodes"),
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", "t.yaml:1:", "nested too deeply"),
    ("a: " + "[" * 80 + "]" * 80 + "\n", "t.yaml:1: a.0.0", "nested deeper than 64 levels"),
    ("a: 1\na: 2\n", "t.yaml:2: a:", "duplicate key (already defined on line 1)"),
    ("a: [\n", "t.yaml:2:", "malformed YAML"),
])
def test_refused_with_file_and_line(text, where, what):
    with pytest.raises(InvalidInput) as e:
        yamlsrc.parse(text, "t.yaml")
    msg = str(e.value)
    assert msg.startswith(where) and what in msg and "\n" not in msg, msg


def test_ordinary_aliases_still_work():
    src = yamlsrc.parse("base: &b {icc: false}\nnets:\n  x: *b\n  y: [*b, *b]\n", "t.yaml")
    assert src.data == {"base": {"icc": False}, "nets": {"x": {"icc": False},
                                                          "y": [{"icc": False}] * 2}}
    assert src.line(("nets", "y", 1)) == 4


def test_size_and_encoding_limits(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * (yamlsrc.MAX_BYTES + 10) + "\n")
    with pytest.raises(InvalidInput, match="big.yaml:1: .* too large"):
        yamlsrc.load(str(big))
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"a: 1\nb: \xff\xfe\n")
    with pytest.raises(InvalidInput, match="bad.yaml:2: not UTF-8 text"):
        yamlsrc.load(str(bad))


def test_cnmlab_up_recursive_anchor_is_one_line(tmp_path):
    """The reproduced crash: ``cnmlab up`` on a topology with a recursive anchor."""
    topo = tmp_path / "loop.yaml"
    topo.write_text("name: loop\nhosts: &h {h1: *h}\n")
    cp = subprocess.run([sys.executable, "-m", "cnmlab.cli", "up", str(topo)],
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 1
    assert cp.stderr.strip().splitlines() == [
        f"cnmlab: {topo}:2: hosts.h1: recursive alias: this value contains itself "
        f"(an *alias inside its own &anchor)"], cp.stderr
