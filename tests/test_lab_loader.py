"""Lab files: every shipped lab validates; bad ones fail with ``FILE:LINE: field.path: ...``."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from cnmlab.errors import InvalidInput
from cnmlab.workshop import catalog, labfile
from cnmlab.workshop.progress import Progress
from cnmlab.workshop.runner import LabRun

GOOD = textwrap.dedent("""\
    id: 99-test
    title: Test lab
    needs: [veth]
    topology:
      hosts:
        host:
          default_bridge: false
          firewall: manual
          sandboxes:
            red: {network: none}
            blue: {network: none}
    steps:
      - id: one
        title: Step one
        text: hello
        task: do it
        checks:
          - link: {ns: red, name: lo, up: true}
        solution:
          - {sh: "ip link set lo up", in: red}
      - id: two
        title: Step two
        text: again
        task: do it again
        checks:
          - link: {ns: red, name: veth-red, address: 10.0.0.1/24}
        hints: [one, two]
        solution:
          - {sh: "ip link add veth-red type veth peer name veth-blue netns {ns:blue}", in: red}
    """)


def write(tmp_path, text: str) -> str:
    d = tmp_path / "99-test"
    d.mkdir(exist_ok=True)
    (d / "lab.yaml").write_text(text)
    return str(d)


def error_of(tmp_path, text: str) -> str:
    with pytest.raises(InvalidInput) as e:
        labfile.load(write(tmp_path, text))
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def line_of(text: str, needle: str) -> int:
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(needle)


# ---- the shipped labs ------------------------------------------------------------------------

def test_every_shipped_lab_loads_and_validates():
    found = labfile.discover()
    assert [l.id for l in found] == ["01-sandboxes-by-hand", "02-default-bridge",
                                     "03-nat-and-ports", "04-user-defined-networks",
                                     "05-service-discovery", "06-macvlan", "07-ipvlan",
                                     "08-overlay", "09-ipvs", "10-write-your-own-driver"]
    for lab in found:
        assert lab.title and lab.steps and lab.needs
        assert os.path.exists(os.path.join(lab.path, "README.md"))
        assert re.fullmatch(r"lab\d\d", lab.default_name)
        for step in lab.steps:
            assert step.text.strip() and step.task.strip() and step.checks and step.solution
            assert step.hints, f"{lab.id}/{step.id} has no hint"


DOCKER_LAB = GOOD.replace("steps:\n", "docker: {host: host, containers: [w1]}\nsteps:\n", 1) \
    .replace("- link: {ns: red, name: lo, up: true}", "- link: {ns: w1, name: eth0}", 1)


def test_a_lab_run_against_real_docker_names_its_host_and_containers(tmp_path):
    lab = labfile.load(write(tmp_path, DOCKER_LAB))
    assert (lab.docker.host, lab.docker.containers) == ("host", ["w1"])
    bad = error_of(tmp_path, DOCKER_LAB.replace("docker: {host: host,", "docker: {host: nope,"))
    assert re.search(r"lab.yaml:\d+: docker.host: unknown host 'nope'; hosts: host", bad)
    bad = error_of(tmp_path, DOCKER_LAB.replace("firewall: manual", "firewall: iptables"))
    assert "docker.host: host host runs dockerd, which makes its own docker0 and rules: give " \
           "it default_bridge: false and firewall: manual" in bad
    bad = error_of(tmp_path, DOCKER_LAB.replace("{ns: w1, name: eth0}", "{ns: w9, name: eth0}"))
    assert "unknown namespace 'w9'" in bad


def test_the_lab_10_files_are_served_classes():
    """The skeleton and every solution load as the SDK classes the lab serves."""
    from cnmlab.plugin.cli import load_class
    from cnmlab.plugin.sdk import IpamDriver, NetworkDriver

    folder = labfile.get("10").path
    for rel, cls, base in (("skeleton/mydriver.py", "MyDriver", NetworkDriver),
                           ("skeleton/myipam.py", "MyIpam", IpamDriver),
                           ("solution/interface.py", "MyDriver", NetworkDriver),
                           ("solution/gateway.py", "MyDriver", NetworkDriver),
                           ("solution/myipam.py", "MyIpam", IpamDriver)):
        assert issubclass(load_class(os.path.join(folder, f"{rel}:{cls}")), base)


def test_shipped_labs_validate_against_the_json_schema():
    import jsonschema
    import yaml

    schema = json.load(open(labfile.SCHEMA_PATH))
    jsonschema.Draft202012Validator.check_schema(schema)
    for lab in labfile.discover():
        data = yaml.safe_load(open(os.path.join(lab.path, "lab.yaml")))
        jsonschema.validate(data, schema)


def test_every_check_kind_is_known_to_the_library():
    from cnmlab.checks.kinds import kinds

    known = set(kinds())
    for lab in labfile.discover():
        for step in lab.steps:
            for chk in step.checks:
                assert next(iter(chk)) in known


def test_labs_dir_override(tmp_path, monkeypatch):
    write(tmp_path, GOOD)
    monkeypatch.setenv("CNMLAB_LABS", str(tmp_path))
    assert [l.id for l in labfile.discover()] == ["99-test"]
    assert labfile.get("99").id == "99-test"
    assert labfile.get("lab99").default_name == "lab99"


def test_user_labs_dir_adds_to_shipped_labs(tmp_path, monkeypatch):
    """``CNMLAB_LABS_PATH`` (and ``--labs-dir``) add a learner's own labs to the shipped ones."""
    write(tmp_path, GOOD)
    monkeypatch.delenv("CNMLAB_LABS", raising=False)
    shipped = [l.id for l in labfile.discover()]
    monkeypatch.setenv(catalog.LABS_PATH_ENV, str(tmp_path))
    assert [l.id for l in labfile.discover()] == shipped + ["99-test"]
    assert labfile.get("99").id == "99-test" and labfile.get(shipped[0]).id == shipped[0]
    monkeypatch.delenv(catalog.LABS_PATH_ENV)
    env = {k: v for k, v in os.environ.items() if k not in ("CNMLAB_LABS", catalog.LABS_PATH_ENV)}
    env["CNMLAB_PROGRESS"] = str(tmp_path / "p.json")
    proc = subprocess.run([sys.executable, "-m", "cnmlab.cli", "--labs-dir", str(tmp_path),
                           "lab", "list", "--json"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert [r["id"] for r in json.loads(proc.stdout)] == shipped + ["99-test"]
    monkeypatch.setenv(catalog.LABS_PATH_ENV, str(tmp_path))  # the workshop app's lab list
    assert [p.id for p in catalog.previews()] == shipped + ["99-test"]


def test_user_labs_dir_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("CNMLAB_LABS", raising=False)
    monkeypatch.setenv(catalog.LABS_PATH_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(InvalidInput, match=r"^CNMLAB_LABS_PATH: .*nowhere: No such file"):
        labfile.discover()
    clash = tmp_path / "mine"
    clash.mkdir()
    shipped = catalog.lab_folders(catalog.labs_dir())[0]
    write(clash, open(os.path.join(shipped, "lab.yaml")).read())
    monkeypatch.setenv(catalog.LABS_PATH_ENV, str(clash))
    with pytest.raises(InvalidInput, match=r"is defined twice, in .* and .*mine/99-test"):
        labfile.discover()


def test_good_file_loads(tmp_path):
    lab = labfile.load(write(tmp_path, GOOD))
    assert lab.default_name == "lab99"
    assert [s.id for s in lab.steps] == ["one", "two"]
    assert lab.step(2).id == "two" and lab.step("one").index == 0
    run = LabRun(lab, "lab99x")
    assert "cnm-lab99x.blue" in run.render(lab.steps[1].solution[0].raw["sh"])


def test_text_file(tmp_path):
    d = write(tmp_path, GOOD.replace("text: hello", "text_file: one.md"))
    with open(os.path.join(d, "one.md"), "w") as f:
        f.write("from a file\n")
    assert labfile.load(d).steps[0].text == "from a file\n"


# ---- bad files: FILE:LINE: field.path: message --------------------------------------------

def test_malformed_yaml(tmp_path):
    text = GOOD.replace("title: Step two", "title: [unclosed")
    msg = error_of(tmp_path, text)
    assert re.match(r".*lab\.yaml:\d+: malformed YAML", msg), msg


def test_unknown_check_kind(tmp_path):
    text = GOOD.replace("- link: {ns: red, name: lo, up: true}", "- reachble: {from: red, to: blue}")
    msg = error_of(tmp_path, text)
    line = line_of(text, "reachble")
    assert f"lab.yaml:{line}: steps.0.checks.0: unknown check 'reachble'; known: " in msg, msg
    assert "reachable" in msg


def test_missing_solution(tmp_path):
    text = GOOD.replace('    solution:\n      - {sh: "ip link set lo up", in: red}\n', "")
    assert text != GOOD
    msg = error_of(tmp_path, text)
    assert f"lab.yaml:{line_of(text, '- id: one')}: steps.0: missing field 'solution'" in msg, msg


def test_bad_cidr_in_a_check(tmp_path):
    text = GOOD.replace("address: 10.0.0.1/24", "address: 10.0.0.300/24")
    msg = error_of(tmp_path, text)
    assert f"lab.yaml:{line_of(text, '10.0.0.300')}: steps.1.checks.0.link.address: " in msg, msg
    assert "not a valid IPv4 CIDR" in msg


def test_bad_cidr_in_the_topology(tmp_path):
    text = GOOD.replace("      sandboxes:\n", "      networks:\n        n1: {subnet: 10.1.0.0/33}\n      sandboxes:\n", 1)
    assert text != GOOD
    msg = error_of(tmp_path, text)
    assert f"lab.yaml:{line_of(text, '10.1.0.0/33')}: topology.hosts.host.networks.n1.subnet:" in msg, msg


def test_bad_cidr_in_an_engine_action(tmp_path):
    text = GOOD.replace('- {sh: "ip link set lo up", in: red}',
                        '- {engine: network_create, host: host, name: n1, subnet: 10.0.0.0/99}')
    msg = error_of(tmp_path, text)
    assert f"lab.yaml:{line_of(text, '10.0.0.0/99')}: steps.0.solution.0.subnet:" in msg, msg


def test_unknown_in_name(tmp_path):
    text = GOOD.replace('in: red}\n  - id: two', 'in: green}\n  - id: two')
    assert text != GOOD
    msg = error_of(tmp_path, text)
    assert f"lab.yaml:{line_of(text, 'in: green')}: steps.0.solution.0.in: unknown namespace " \
           f"'green' in 'in:'; known: blue, host, red, upstream" in msg, msg


def test_unknown_ns_template(tmp_path):
    text = GOOD.replace("netns {ns:blue}", "netns {ns:bleu}")
    msg = error_of(tmp_path, text)
    assert "steps.1.solution.0.sh: unknown namespace 'bleu'" in msg, msg


def test_unknown_sandbox_in_a_check(tmp_path):
    text = GOOD.replace("link: {ns: red, name: lo", "link: {ns: rde, name: lo")
    msg = error_of(tmp_path, text)
    assert f"lab.yaml:{line_of(text, 'ns: rde')}: steps.0.checks.0.link.ns: unknown namespace" in msg


def test_unknown_field_and_bad_check_params(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("task: do it again", "task: do it again\n    tsak: x"))
    assert "steps.1: unknown field" in msg and "'tsak'" in msg, msg
    msg = error_of(tmp_path, GOOD.replace("name: lo, up: true", "name: lo, up: yes please"))
    assert "steps.0.checks.0.link: check link: up must be true or false" in msg, msg


def test_bad_engine_action(tmp_path):
    text = GOOD.replace('- {sh: "ip link set lo up", in: red}', '- {engine: launch, host: host}')
    msg = error_of(tmp_path, text)
    assert f"lab.yaml:{line_of(text, 'launch')}: steps.0.solution.0.engine: 'launch' is not one of" in msg, msg


def test_duplicate_step_id(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("- id: two", "- id: one"))
    assert "steps.1.id: step id 'one' is used twice" in msg, msg


def test_cli_errors_are_one_line(tmp_path):
    text = GOOD.replace("- link: {ns: red, name: lo, up: true}", "- reachble: {from: red, to: blue}")
    write(tmp_path, text)
    env = dict(os.environ, CNMLAB_LABS=str(tmp_path), CNMLAB_PROGRESS=str(tmp_path / "p.json"))
    proc = subprocess.run([sys.executable, "-m", "cnmlab.cli", "lab", "show", "99-test"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown check 'reachble'" in lines[0], proc.stderr


def test_cli_list_json_and_show(tmp_path):
    write(tmp_path, GOOD)
    env = dict(os.environ, CNMLAB_LABS=str(tmp_path), CNMLAB_PROGRESS=str(tmp_path / "p.json"))
    proc = subprocess.run([sys.executable, "-m", "cnmlab.cli", "lab", "list", "--json"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert rows[0]["id"] == "99-test" and rows[0]["needs"] == ["veth"]
    assert [s["id"] for s in rows[0]["steps"]] == ["one", "two"]
    assert rows[0]["progress"]["total"] == 2
    proc = subprocess.run([sys.executable, "-m", "cnmlab.cli", "lab", "show", "99", "2"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and "Step 2/2: Step two" in proc.stdout and "do it again" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "cnmlab.cli", "lab", "show", "99", "7"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 1 and "has no step '7'" in proc.stderr


def test_progress_file(tmp_path):
    p = Progress(str(tmp_path / "sub" / "progress.json"))
    p.mark("l", "a", True)
    p.mark("l", "b", True)
    p.mark("l", "a", False)
    assert p.hint_shown("l", "b") == 1 and p.hint_shown("l", "b") == 2
    assert p.lab("l") == {"passed": ["b"], "hints": {"b": 2}}
    p.clear("l")
    assert p.lab("l") == {"passed": [], "hints": {}}


def test_catalog_previews_without_loading_the_checks(tmp_path):
    write(tmp_path, GOOD)
    (p,) = catalog.previews(str(tmp_path))
    assert (p.id, p.title, p.default_name, [s.id for s in p.steps]) == (
        "99-test", "Test lab", "lab99", ["one", "two"])
    # a file the quick read cannot take: one line naming it, or the full loader's verdict
    write(tmp_path, "id: [unclosed\n")
    with pytest.raises(InvalidInput, match=r"99-test/lab.yaml: cannot read it"):
        catalog.previews(str(tmp_path))
    with pytest.raises(InvalidInput, match=r"lab.yaml:2: malformed YAML"):
        catalog.previews(str(tmp_path), broken=labfile.load)
    # the lab list must stay light: reading it imports neither the checks nor the engine
    code = ("import sys; from cnmlab.workshop import catalog; catalog.previews(); "
            "print(sorted(m for m in sys.modules if m.startswith('cnmlab')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "cnmlab.checks" not in out and "cnmlab.lab'" not in out, out
