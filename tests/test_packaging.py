"""A built wheel works outside the checkout: labs, profiles, schema and styles ship with it.

The editable install of the test venv finds everything in the repo, so it cannot catch a file
left out of the wheel. This builds the wheel from a copy of the source tree (the worktree stays
untouched), installs it into a brand-new venv (no system site-packages; dependencies come from
the configured package index, PyPI, through pip's cache) and runs ``cnmlab`` from there, in a
folder that holds no source. It is slow (~10-30 s) and kept in the suite on purpose.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", "results",
                              "__snapshots__")

MY_LAB = textwrap.dedent("""\
    id: 42-my-own
    title: My own lab
    needs: [veth]
    topology:
      hosts:
        host:
          default_bridge: false
          firewall: manual
          sandboxes:
            red: {network: none}
    steps:
      - id: one
        title: Step one
        text: hello
        task: do it
        checks:
          - link: {ns: red, name: lo, up: true}
        solution:
          - {sh: "ip link set lo up", in: red}
    """)


def run(argv: list[str], cwd: str, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A wheel built from a copy of the source tree, and the build backend's verbose output."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    shutil.copytree(REPO, src, ignore=SKIP)
    wheels = base / "dist"
    r = run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(wheels),
             str(src)], cwd=str(base))
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = wheels.glob("cnmlab-*.whl")
    return str(wheel), r.stdout + r.stderr


@pytest.fixture(scope="module")
def installed(built: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh venv with cnmlab installed from the freshly built wheel; returns its bin/."""
    wheel = built[0]
    base = tmp_path_factory.mktemp("venv")
    venv = base / "venv"
    r = run([sys.executable, "-m", "venv", str(venv)], cwd=str(base))
    assert r.returncode == 0, r.stderr
    r = run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], cwd=str(base))
    assert r.returncode == 0, ("installing the wheel's dependencies needs the package index "
                               "(PyPI): " + r.stderr[-2000:])
    return str(venv / "bin")


def clean_env(tmp: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CNMLAB_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["CNMLAB_PROGRESS"] = os.path.join(tmp, "progress.json")
    env["CNMLAB_STATE_DIR"] = os.path.join(tmp, "state")  # other labs on this machine: not ours
    return env


def test_build_prints_no_setuptools_warnings(built):
    """Deprecations (license table) and data folders missing from ``packages`` are gone."""
    warnings = [line.strip() for line in built[1].splitlines()
                if re.search(r"[a-z_]Warning: ", line)]
    assert warnings == []


def test_wheel_holds_every_source_file(built):
    """Each file of the source folders the wheel maps under ``cnmlab`` is in it (a package left
    out of pyproject's list, or a data file its globs miss, would only fail outside a checkout)."""
    mapped = {"cnmlab": "cnmlab", "checks": "cnmlab/checks", "tui": "cnmlab/tui",
              "labs": "cnmlab/labs_data"}
    tracked = subprocess.run(["git", "-C", REPO, "ls-files", *mapped], capture_output=True,
                             text=True, check=True).stdout.split()
    with zipfile.ZipFile(built[0]) as z:
        names = set(z.namelist())
    wanted = {mapped[path.split("/", 1)[0]] + "/" + path.split("/", 1)[1] for path in tracked}
    assert sorted(wanted - names) == []


def test_wheel_lists_the_shipped_labs(installed, tmp_path):
    shipped = sorted(e for e in os.listdir(os.path.join(REPO, "labs"))
                     if os.path.isfile(os.path.join(REPO, "labs", e, "lab.yaml")))
    r = run([os.path.join(installed, "cnmlab"), "lab", "list", "--json"], cwd=str(tmp_path),
            env=clean_env(str(tmp_path)))
    assert r.returncode == 0, r.stderr
    assert [row["id"] for row in json.loads(r.stdout)] == shipped
    where = run([os.path.join(installed, "python"), "-c",
                 "import cnmlab, cnmlab.workshop.catalog as c; print(cnmlab.__file__); print(c.labs_dir())"],
                cwd=str(tmp_path), env=clean_env(str(tmp_path)))
    pkg, labs_dir = where.stdout.split()
    assert pkg.startswith(os.path.dirname(installed)) and not pkg.startswith(REPO)
    assert labs_dir.startswith(os.path.dirname(installed)), labs_dir


def test_wheel_adds_a_users_labs_dir(installed, tmp_path):
    mine = tmp_path / "mylabs" / "42-my-own"
    mine.mkdir(parents=True)
    (mine / "lab.yaml").write_text(MY_LAB)
    env = clean_env(str(tmp_path))
    r = run([os.path.join(installed, "cnmlab"), "--labs-dir", str(tmp_path / "mylabs"), "lab",
             "show", "42"], cwd=str(tmp_path), env=env)
    assert r.returncode == 0, r.stderr
    assert "Step 1/1: Step one" in r.stdout
    env["CNMLAB_LABS_PATH"] = str(tmp_path / "mylabs")
    r = run([os.path.join(installed, "cnmlab"), "lab", "list"], cwd=str(tmp_path), env=env)
    assert r.returncode == 0 and "42-my-own" in r.stdout and "02-default-bridge" in r.stdout


def test_wheel_ships_profiles_schema_and_styles(installed, tmp_path):
    code = textwrap.dedent("""\
        import os
        from cnmlab.checks import conformance
        from cnmlab.tui.app import CnmlabApp
        from cnmlab.workshop import labfile
        assert os.path.isfile(labfile.SCHEMA_PATH), labfile.SCHEMA_PATH
        assert conformance.available() == ["bridge", "ipvlan", "macvlan", "overlay"], conformance.available()
        for name in conformance.available():
            conformance.load(name)
        assert len(CnmlabApp.CSS_PATH) == 2, CnmlabApp.CSS_PATH
        print("ok")
        """)
    r = run([os.path.join(installed, "python"), "-c", code], cwd=str(tmp_path),
            env=clean_env(str(tmp_path)))
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
