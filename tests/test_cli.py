"""The cnmlab command as a user runs it: up/ls/inspect/exec/down/clean, and one-line errors."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from cnmlab import state
from cnmlab.kernel import netns

pytestmark = pytest.mark.kernel

TOPO = """\
name: {name}
hosts:
  h1:
    networks:
      front: {{subnet: 10.77.1.0/24}}
      back: {{subnet: 10.77.2.0/24}}
    sandboxes:
      web: {{networks: [front, back], publish: ["8080:80"]}}
      db: {{networks: {{back: {{ip: 10.77.2.50}}}}}}
"""


def cnmlab(*args, check=False, user=None, timeout=60):
    env = dict(os.environ)
    kw = {}
    if user is not None:
        kw["user"] = user
    return subprocess.run([sys.executable, "-m", "cnmlab.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, check=check, **kw)


def write(tmp_path, text, name="topo.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


def lab_namespaces(name):
    return [n for n in netns.list_names() if n.startswith(f"cnm-{name}.")]


def test_up_inspect_exec_down(tmp_path, lab_name):
    path = write(tmp_path, TOPO.format(name=lab_name))
    try:
        r = cnmlab("up", path)
        assert r.returncode == 0, r.stderr
        assert lab_name in json.loads(cnmlab("ls", "--json").stdout)[0]["name"] or any(
            row["name"] == lab_name for row in json.loads(cnmlab("ls", "--json").stdout))
        data = json.loads(cnmlab("inspect", lab_name, "--json").stdout)
        h1 = data["hosts"]["h1"]
        assert h1["networks"]["front"]["subnet"] == "10.77.1.0/24"
        assert h1["networks"]["front"]["gateway"] == "10.77.1.1"
        assert h1["networks"]["bridge"]["device"] == "docker0"
        web = h1["sandboxes"]["web"]
        assert web["netns"] == f"cnm-{lab_name}.web"
        itf = {i["name"]: i for i in web["interfaces"]}
        assert itf["eth0"]["addresses"] == ["10.77.1.2/24"]
        assert itf["eth1"]["mac"] == "02:42:0a:4d:02:02"
        assert h1["sandboxes"]["db"]["networks"] == {"back": "10.77.2.50"}
        r = cnmlab("exec", f"{lab_name}/web", "--", "ping", "-c1", "-W1", "10.77.2.50")
        assert r.returncode == 0, r.stdout + r.stderr
        r = cnmlab("exec", f"{lab_name}/db", "--", "ip", "-o", "-4", "addr", "show", "eth0")
        assert "10.77.2.50/24" in r.stdout
        # only the first "--" separates: the command's own "--" reaches it
        r = cnmlab("exec", f"{lab_name}/db", "--", "sh", "-c", 'echo "$@"', "sh", "--", "x")
        assert r.returncode == 0 and r.stdout.strip() == "-- x", r.stdout
        text = cnmlab("inspect", lab_name).stdout
        assert "sandbox web" in text and "10.77.1.2/24" in text
    finally:
        r = cnmlab("down", lab_name)
    assert r.returncode == 0, r.stderr
    assert lab_namespaces(lab_name) == [] and not state.exists(lab_name)


BAD = {
    "malformed": ("name: x\nhosts:\n  h1:\n    networks: [a\n", r"topo.yaml:5: malformed YAML"),
    "overlap": ("name: {n}\nhosts:\n  h1:\n    networks:\n      a: {{subnet: 10.1.0.0/16}}\n"
                "      b: {{subnet: 10.1.2.0/24}}\n",
                r"topo.yaml:6: hosts.h1.networks.b: invalid pool request: Pool overlaps"),
    "driver": ("name: {n}\nhosts:\n  h1:\n    networks:\n      a: {{driver: bridgy}}\n",
               r"topo.yaml:5: hosts.h1.networks.a.driver: unknown network driver 'bridgy'"),
    "duplicate": ("name: {n}\nhosts:\n  h1:\n    networks:\n      a: {{}}\n      a: {{}}\n",
                  r"topo.yaml:6: hosts.h1.networks.a: duplicate key"),
    "predefined": ("name: {n}\nhosts:\n  h1:\n    networks:\n      bridge: {{}}\n",
                   r"topo.yaml:5: hosts.h1.networks.bridge: network with name bridge already"),
    "ifname": ("name: {n}\nhosts:\n  h1:\n    networks:\n      a: {{bridge_name: abcdefghijklmnop}}\n",
               r"topo.yaml:5: hosts.h1.networks.a.bridge_name: interface name 'abcdefghijklmnop' "
               r"is longer than 15"),
    "cidr": ("name: {n}\nhosts:\n  h1:\n    networks:\n      a: {{subnet: 10.0.0.0/33}}\n",
             r"topo.yaml:5: hosts.h1.networks.a.subnet: '10.0.0.0/33' is not a valid"),
    "unknown-net": ("name: {n}\nhosts:\n  h1:\n    sandboxes:\n      s1: {{network: nope}}\n",
                    r"topo.yaml:5: hosts.h1.sandboxes.s1.networks: network 'nope' is not defined"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_and_builds_nothing(tmp_path, lab_name, case):
    text, expected = BAD[case]
    path = write(tmp_path, text.format(n=lab_name))
    r = cnmlab("up", path)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    import re

    assert re.search(expected, lines[0]), lines[0]
    assert lab_namespaces(lab_name) == [] and not state.exists(lab_name)


def test_not_root_is_one_line(tmp_path, lab_name):
    path = write(tmp_path, TOPO.format(name=lab_name))
    os.chmod(tmp_path, 0o755)
    os.chmod(path, 0o644)
    # the interpreter may live under /root, out of nobody's reach: load cnmlab as root, then
    # drop to nobody before the command runs, as a non-root user's process would be
    code = ("import os, sys; import cnmlab.cli, cnmlab.topofile, cnmlab.lab\n"
            "os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)\n"
            "sys.exit(cnmlab.cli.main(['up', sys.argv[1]]))\n")
    r = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and "needs root" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_missing_kernel_feature_is_one_line():
    from cnmlab.kernel import features

    missing = [f for f, ok in features.probe_all().items() if not ok]
    if not missing:
        pytest.skip("this kernel has every probed feature")
    code = ("import sys; from cnmlab.kernel import features; from cnmlab.errors import CnmError\n"
            f"try:\n features.require([{missing[0]!r}], 'the test lab')\n"
            "except CnmError as e:\n print(e); sys.exit(1)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 1 and f"the test lab needs {missing[0]}" in r.stdout
    assert "full-kernel VM" in r.stdout


def test_unknown_lab_and_sandbox_are_one_line():
    for args in (["down", "no-such-lab"], ["inspect", "no-such-lab"],
                 ["exec", "no-such-sandbox", "--", "true"]):
        r = cnmlab(*args)
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "Traceback" not in r.stderr


KILLER = """
import os, signal, sys
from cnmlab import controller
from cnmlab.lab import Lab
real = controller.setup_namespace
count = [0]
def dying(name, **kw):
    real(name, **kw)
    count[0] += 1
    if count[0] == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)  # die right after a namespace was made
controller.setup_namespace = dying
import cnmlab.lab
cnmlab.lab.setup_namespace = dying
lab = Lab(sys.argv[1])
h = lab.add_host("h1")
h.network_create("n1")
h.run("s1", "n1", publish=["8080:80"])
h.run("s2", "n1")
h.run("s3", "n1")
"""


@pytest.mark.parametrize("die_at", [1, 3, 5])
def test_clean_after_kill_9(lab_name, die_at):
    r = subprocess.run([sys.executable, "-c", KILLER, lab_name, str(die_at)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == -signal.SIGKILL
    assert lab_namespaces(lab_name), "the killed build should have left namespaces behind"
    assert state.exists(lab_name)
    r = cnmlab("clean", "--lab", lab_name)  # only ours: parallel test workers keep theirs
    assert r.returncode == 0, r.stderr
    assert lab_namespaces(lab_name) == [] and not state.exists(lab_name)
    assert not any(n.startswith(f"cnm-{lab_name}.") for n in os.listdir("/etc/netns")
                   if os.path.isdir("/etc/netns"))


def test_clean_stops_proxies_after_kill_9(lab_name):
    code = ("import os, signal, sys; from cnmlab.lab import Lab\n"
            "lab = Lab(sys.argv[1]); h = lab.add_host('h1')\n"
            "h.run('web', publish=['8080:80'])\n"
            "print(h.model.proxies['tcp/8080'], flush=True); os.kill(os.getpid(), 9)\n")
    r = subprocess.run([sys.executable, "-c", code, lab_name], capture_output=True, text=True,
                       timeout=60)
    proxy_pid = int(r.stdout.strip())
    assert os.path.exists(f"/proc/{proxy_pid}")
    assert cnmlab("clean", "--lab", lab_name).returncode == 0
    deadline = time.monotonic() + 3
    while os.path.exists(f"/proc/{proxy_pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    status = open(f"/proc/{proxy_pid}/stat").read() if os.path.exists(f"/proc/{proxy_pid}") else ""
    assert not status or ") Z" in status
    assert lab_namespaces(lab_name) == []


def test_down_removes_what_another_process_added(lab_name):
    from cnmlab.lab import Lab

    first = Lab(lab_name)
    first.add_host("h1")
    second = Lab.open(lab_name)
    second.host("h1").run("late")
    second.close()
    first.down()
    assert lab_namespaces(lab_name) == [] and not state.exists(lab_name)


def test_the_features_cache_is_not_trusted_across_cnmlab_versions(tmp_path, monkeypatch):
    """The cache file is keyed by kernel release and by the probing code itself."""
    from cnmlab.kernel import features

    name = features._cache_name()
    assert os.uname().release in name
    changed = tmp_path / "features.py"
    changed.write_bytes(open(features.__file__, "rb").read() + b"\n# a fixed probe\n")
    monkeypatch.setattr(features, "__file__", str(changed))
    assert features._cache_name() != name
