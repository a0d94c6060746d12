"""The ingress routing mesh (``cnmlab.ingress``) across three hosts, over real IPVS and etcd.

The mesh test needs IPVS, so it runs in the VM lane: ONE test doing a lot (each lab with a
control plane costs etcd and three agents in the guest's slow Python). The pure parts (rule
text, the firewall rewrite keeping the agent's chains, refusals) run on the host.
"""
from __future__ import annotations

import shutil
import textwrap

import pytest

from cnmlab import ingress
from cnmlab.checks.kinds import run_check
from cnmlab.checks.targets import EngineTarget
from cnmlab.checks.vmlane import needs
from cnmlab.errors import CnmError, InvalidInput
from cnmlab.kernel import nsexec
from cnmlab.kernel.ipvs import Ipvs
from cnmlab.lab import Lab

pytestmark = pytest.mark.kernel
HOSTS = ["h1", "h2", "h3"]


def _mesh(t, backends, **kw):
    r = run_check(t, {"routing-mesh": {"from": "underlay:lan", "hosts": HOSTS, "port": 8080,
                                       "backend_port": 80, "backends": backends, **kw}})
    assert r.ok or (r.reason and "\n" not in r.reason)
    return r


def _sh(ns: str, *argv: str) -> None:
    nsexec.run(ns, list(argv))


@needs("ipvs")
@pytest.mark.skipif(not shutil.which("etcd"), reason="needs etcd-server")
def test_any_hosts_published_port_reaches_every_task_through_the_store(lab_name):
    """Tasks spread over hosts; every host's port 8080 reaches every task, also h3 that runs
    none; a missing mark or DNAT is caught and named; the agents (not the lab process) program
    each host from etcd: with h3's agent stopped h3 stays stale until it is back; a host added
    later answers on the published port too."""
    lab = Lab(lab_name, upstream=False)
    try:
        lab.add_underlay("lan", subnet="192.168.50.0/24")
        for h in HOSTS:
            lab.add_host(h, underlay="lan")
        lab.start_control_plane()
        svc = lab.service_create("web", replicas=2, publish="8080:80")
        assert svc.fwmark >= 256 and (svc.published, svc.target) == (8080, 80)
        tasks = lab.service_tasks("web")
        assert [(t.name, t.host) for t in tasks] == [("web.1", "h1"), ("web.2", "h2")]
        t = EngineTarget(lab)
        r = _mesh(t, ["web.1", "web.2"])
        assert r.ok, f"{r.observed}: {r.reason}"
        assert "h3: web.1 2, web.2 2" in r.observed  # h3 runs no task and still answers

        # what Docker shows on a node: the DNAT on the host, the mark and IPVS in ingress_sbox
        sbox = lab.sandbox("ingress_sbox.h3")
        gw_ip = sbox.ip("docker_gwbridge")
        nat = lab.host("h3").exec(["iptables", "-t", "nat", "-S", "DOCKER-INGRESS"]).stdout
        dnat = f"-A DOCKER-INGRESS -p tcp -m tcp --dport 8080 -j DNAT --to-destination " \
               f"{gw_ip}:8080"
        assert dnat in nat
        mangle = sbox.exec(["iptables", "-t", "mangle", "-S", "PREROUTING"]).stdout
        mark = f"-A PREROUTING -p tcp -m tcp --dport 8080 -j MARK --set-xmark " \
               f"{hex(svc.fwmark)}/0xffffffff"
        assert mark in mangle
        (state,) = Ipvs(sbox.netns).services()
        assert state.service.fwmark == svc.fwmark and state.scheduler == "rr"
        assert sorted(s.ip for s in state.servers) == sorted(t.ip for t in tasks)
        assert {s.forward for s in state.servers} == {"masq"}

        # broken: h2's ingress sandbox lost its mark (IPVS never sees the packets)
        _sh(lab.sandbox("ingress_sbox.h2").netns, "iptables", "-t", "mangle", "-D",
            *mark.split()[1:])
        r = _mesh(t, ["web.1", "web.2"])
        assert not r.ok and "h2's port 8080" in r.reason and "--set-mark" in r.reason, r.reason
        _sh(lab.sandbox("ingress_sbox.h2").netns, "iptables", "-t", "mangle", "-A",
            *mark.split()[1:])
        # broken: h3 (no task) lost its DNAT: the mesh answers only where tasks run
        _sh(lab.host("h3").netns, "iptables", "-t", "nat", "-D", *dnat.split()[1:])
        r = _mesh(t, ["web.1", "web.2"])
        assert not r.ok and "nothing answered h3's port 8080" in r.reason, r.reason
        assert "h1: web.1 2, web.2 2" in r.observed
        _sh(lab.host("h3").netns, "iptables", "-t", "nat", "-I", *dnat.split()[1:])
        assert _mesh(t, ["web.1", "web.2"]).ok

        # the agents program the hosts from the store: h3's agent stopped, h3 stays stale
        lab.stop_agent("h3")
        lab.service_scale("web", 3, timeout=None)
        assert lab.service_tasks("web")[-1].host == "h3"  # spread: the empty host
        lab.converge_mesh(hosts=["h1", "h2"])
        assert "h3: FWM" in (lab.mesh_out_of_sync("h3") or "")
        with pytest.raises(CnmError, match="did not converge within 0.5 s: h3: FWM"):
            lab.converge_mesh(0.5)
        lab.restart_agent("h3")
        lab.converge_mesh()
        r = _mesh(t, ["web.1", "web.2", "web.3"], requests=3)
        assert r.ok, f"{r.observed}: {r.reason}"

        # scale down: removed tasks leave every host's IPVS; rm: nothing left
        lab.service_scale("web", 1)
        r = _mesh(t, ["web.1"], requests=2)
        assert r.ok, f"{r.observed}: {r.reason}"

        # a node that joins now gets its ingress sandbox and every published port at once
        lab.add_host("h4", underlay="lan")
        assert lab.mesh_out_of_sync("h4") is None
        r = _mesh(t, ["web.1"], requests=2, hosts=[*HOSTS, "h4"])
        assert r.ok and "h4: web.1 2" in r.observed, f"{r.observed}: {r.reason}"
        lab.service_rm("web")
        assert Ipvs(sbox.netns).services() == []
        nat = lab.host("h1").exec(["iptables", "-t", "nat", "-S", "DOCKER-INGRESS"]).stdout
        assert "DNAT" not in nat
        assert lab.mesh_services() == {}
    finally:
        lab.down()


def test_rule_text_and_refusals(lab_name):
    """The rules an agent writes, read as text; bad --publish values and a lab without a
    control plane are refused in one line, before anything is made."""
    assert ingress.parse_publish("8080:80") == (8080, 80, "tcp")
    assert ingress.parse_publish("53:5353/udp") == (53, 5353, "udp")
    assert ingress.parse_publish(80) == (80, 80, "tcp")
    for bad in ("x:80", "8080:0", "8080:80/sctp", "70000"):
        with pytest.raises(InvalidInput, match="publish"):
            ingress.parse_publish(bad)
    svc = ingress.MeshService("web", 8080, 80, "tcp", 256)
    rules = ingress.host_rules([svc], "172.18.0.2").splitlines()
    assert "-A DOCKER-INGRESS -p tcp -m tcp --dport 8080 -j DNAT --to-destination " \
           "172.18.0.2:8080" in rules
    assert rules[-2:] == ["-A DOCKER-INGRESS -j RETURN", "COMMIT"]
    assert "-A PREROUTING -p tcp -m tcp --dport 8080 -j MARK --set-xmark 0x100/0xffffffff" \
        in ingress.sbox_marks([svc])
    lab = Lab(lab_name, upstream=False)
    try:
        lab.add_host("h1")
        with pytest.raises(InvalidInput, match="control plane"):
            lab.service_create("web", replicas=1, publish="8080:80")
        assert "ingress_sbox.h1" not in lab.state.hosts["h1"].sandboxes
    finally:
        lab.down()


def test_the_hosts_firewall_rewrite_keeps_the_agents_ingress_chains(lab_name):
    """The lab process reconciles a host's firewall when its bridges change; the
    DOCKER-INGRESS chains an agent wrote there (another writer) must survive, jumps included."""
    lab = Lab(lab_name, upstream=False)
    try:
        h = lab.add_host("h1")
        svc = ingress.MeshService("web", 8080, 80, "tcp", 256)
        nsexec.run(h.netns, ["iptables-restore", "--noflush"],
                   input=ingress.host_rules([svc], "172.18.0.2"))
        ingress.install_jumps(h.netns)  # what the agent does
        ingress.install_jumps(h.netns)  # once
        before = h.iptables()
        h.network_create("app", subnet="10.74.0.0/24")  # rewrites the host's tables
        after = h.iptables()
        ingress_lines = [l for l in before.splitlines() if "DOCKER-INGRESS" in l]
        assert len(ingress_lines) == 10  # 2 chains, 3 jumps, 3 filter + 2 nat rules
        for line in ingress_lines:
            assert line in after, line
        # Docker's order: the user's chain first, the routing mesh's second
        forward = [l for l in after.splitlines() if l.startswith("-A FORWARD")]
        assert forward[:2] == ["-A FORWARD -j DOCKER-USER", "-A FORWARD -j DOCKER-INGRESS"]
        nat = [l for l in after.splitlines() if l.startswith("-A PREROUTING")]
        assert nat[0] == "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER-INGRESS"
        # a host without the chains gets none
        h2 = lab.add_host("h2")
        h2.network_create("app", subnet="10.75.0.0/24")
        assert "DOCKER-INGRESS" not in h2.iptables()
    finally:
        lab.down()


def test_lab_files_publish_one_port_and_say_where_it_is_wrong(tmp_path):
    """A lab file's ``service_create`` with ``publish`` (the routing mesh) needs no network,
    names the ingress sandboxes for later steps, and refuses a bad or second port in one line
    pointing at the file's line."""
    from cnmlab.workshop import labfile

    base = textwrap.dedent("""\
        id: 99-mesh
        title: Mesh
        needs: [veth]
        topology:
          hosts:
            h1: {}
            h2: {}
        steps:
          - id: one
            title: One
            text: t
            task: t
            checks:
              - link: {ns: ingress_sbox.h2, name: eth0}
            solution:
              - {engine: service_create, host: h1, name: web, publish: [PUBLISH]}
        """)
    d = tmp_path / "99-mesh"
    d.mkdir()
    (d / "lab.yaml").write_text(base.replace("PUBLISH", '"8080:80"'))
    lab = labfile.load(str(d))
    assert labfile.engine_command(lab.steps[0].solution[0].raw) == \
        "cnmlab lab docker {lab} --host h1 service create --publish 8080:80 --replicas 1 web"
    for bad, says in (('"8080:x"', "publish"), ('"8080:80", "9090:90"', "one port")):
        (d / "lab.yaml").write_text(base.replace("PUBLISH", bad))
        with pytest.raises(InvalidInput) as e:
            labfile.load(str(d))
        msg = str(e.value)
        assert "\n" not in msg and says in msg and "lab.yaml:16" in msg, msg


@pytest.mark.skipif(not shutil.which("etcd"), reason="needs etcd-server")
def test_an_on_demand_control_plane_starts_with_the_first_published_service(tmp_path, lab_name):
    """``control_plane: on-demand`` (lab 09): no etcd and no agent until a service publishes
    a port; then the embedded one starts, with an agent on every host."""
    from cnmlab import topofile

    f = tmp_path / "topo.yaml"
    f.write_text(textwrap.dedent(f"""\
        name: {lab_name}
        underlays:
          lan: {{subnet: 192.168.50.0/24}}
        control_plane: on-demand
        hosts:
          h1: {{underlay: lan}}
          h2: {{underlay: lan}}
        """))
    lab = topofile.build(topofile.load(str(f)))
    try:
        assert lab.control_plane is None and lab.cluster is None
        assert lab.mesh_services() == {}
        try:  # this kernel may lack IPVS: the agents then cannot program it (not tested here)
            lab.service_create("web", replicas=0, publish="8080:80", timeout=1)
        except CnmError:
            pass
        info = lab.control_plane
        assert info and info["embedded"] and sorted(info["agents"]) == ["h1", "h2"]
        assert lab.cluster is not None and set(lab.cluster.agents()) == {"h1", "h2"}
        assert list(lab.mesh_services()) == ["web"]
        assert {"ingress_sbox.h1", "ingress_sbox.h2"} <= {s.name for s in lab.sandboxes()}
    finally:
        lab.down()
