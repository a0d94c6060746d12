"""The firewall's reconcile step: several writers share one namespace's chains, none wipes another.

Pure-logic tests run the planner against a small model of iptables (``-A/-I/-D/-F`` applied to
lists); the kernel tests run it for real: cnmlab's engine and cnmlab's bridge driver served as
a plugin (``cnmlab.plugin.adapter``) program the same host namespace, with a user's rules
beside them, and every side's rules survive every other side's changes. The old behaviour
(restore whole tables) is kept here as the broken setup, to show the check catches it.
"""
from __future__ import annotations

import os
import uuid

import pytest

from cnmlab.kernel import nsexec
from cnmlab.firewall import reconcile
from cnmlab.firewall.iptables import IptablesFirewall

PID = os.getpid()


def apply(tables: dict[str, reconcile.Table], script: str) -> dict[str, reconcile.Table]:
    """What ``iptables-restore --noflush`` does with ``script`` (the subset plan emits)."""
    table = None
    for line in script.splitlines():
        if line.startswith("*"):
            table = tables.setdefault(line[1:], reconcile.Table())
        elif line == "COMMIT" or table is None:
            continue
        elif line.startswith(":"):
            name, policy = line[1:].split()[:2]
            table.policies[name] = policy
            if policy == "-":
                table.rules[name] = []  # declaring a user chain flushes it under --noflush
            table.rules.setdefault(name, [])
        else:
            op, chain, *rest = line.split()
            rules = table.rules.setdefault(chain, [])
            if op == "-A":
                rules.append(line)
            elif op == "-F":
                rules.clear()
            elif op == "-D":
                rules.remove(f"-A {chain} {' '.join(rest)}")
            elif op == "-I":
                rules.insert(int(rest[0]) - 1, f"-A {chain} {' '.join(rest[1:])}")
    return tables


def _t(policies: dict[str, str], rules: dict[str, list[str]]) -> dict[str, reconcile.Table]:
    return {"filter": reconcile.Table(dict(policies), {c: list(r) for c, r in rules.items()})}


ENGINE = _t({"FORWARD": "DROP", "DOCKER-USER": "-"},
            {"FORWARD": ["-A FORWARD -j DOCKER-USER", "-A FORWARD -i docker0 -j ACCEPT"],
             "DOCKER-USER": ["-A DOCKER-USER -j RETURN"]})


def test_a_single_writer_gets_exactly_its_rendering_and_then_nothing_to_do():
    current = _t({"FORWARD": "ACCEPT"}, {"FORWARD": []})
    script = reconcile.plan(ENGINE, current, [])
    after = apply(current, script)
    assert after["filter"].rules == ENGINE["filter"].rules
    assert after["filter"].policies["FORWARD"] == "DROP"
    assert reconcile.plan(ENGINE, after, reconcile.owned(ENGINE)) == ""


def test_other_writers_lines_stay_and_the_shared_scaffold_is_not_duplicated():
    # dockerd (or a plugin) was there first, with the same jump and its own bridge
    current = _t({"FORWARD": "DROP", "DOCKER-USER": "-"},
                 {"FORWARD": ["-A FORWARD -j DOCKER-USER", "-A FORWARD -i br-docker -j ACCEPT"],
                  "DOCKER-USER": ["-A DOCKER-USER -s 10.0.0.0/8 -j DROP",
                                  "-A DOCKER-USER -j RETURN"]})
    after = apply(current, reconcile.plan(ENGINE, current, []))
    assert after["filter"].rules["FORWARD"] == ["-A FORWARD -j DOCKER-USER",
                                                "-A FORWARD -i br-docker -j ACCEPT",
                                                "-A FORWARD -i docker0 -j ACCEPT"]
    assert after["filter"].rules["DOCKER-USER"] == ["-A DOCKER-USER -s 10.0.0.0/8 -j DROP",
                                                    "-A DOCKER-USER -j RETURN"]


def test_a_writer_deletes_only_what_it_rendered_before():
    current = _t({"FORWARD": "DROP"},
                 {"FORWARD": ["-A FORWARD -j DOCKER-USER", "-A FORWARD -i br-old -j ACCEPT",
                              "-A FORWARD -i br-docker -j ACCEPT",
                              "-A FORWARD -i docker0 -j ACCEPT"]})
    last = ["filter -A FORWARD -j DOCKER-USER", "filter -A FORWARD -i br-old -j ACCEPT",
            "filter -A FORWARD -i docker0 -j ACCEPT"]
    after = apply(current, reconcile.plan(ENGINE, current, last))
    assert after["filter"].rules["FORWARD"] == ["-A FORWARD -j DOCKER-USER",
                                                "-A FORWARD -i br-docker -j ACCEPT",
                                                "-A FORWARD -i docker0 -j ACCEPT"]


def test_new_lines_go_before_the_next_line_of_the_writer_in_its_own_order():
    want = _t({"FORWARD": "DROP"}, {"FORWARD": ["-A FORWARD -j DOCKER-USER",
                                                "-A FORWARD -i br-new -j ACCEPT",
                                                "-A FORWARD -i docker0 -j ACCEPT",
                                                "-A FORWARD -i br-x -j DROP"]})
    current = _t({"FORWARD": "DROP"}, {"FORWARD": ["-A FORWARD -i foreign -j ACCEPT",
                                                   "-A FORWARD -j DOCKER-USER",
                                                   "-A FORWARD -i docker0 -j ACCEPT",
                                                   "-A FORWARD -i foreign2 -j ACCEPT"]})
    after = apply(current, reconcile.plan(want, current, reconcile.owned(ENGINE)))
    assert after["filter"].rules["FORWARD"] == ["-A FORWARD -i foreign -j ACCEPT",
                                                "-A FORWARD -j DOCKER-USER",
                                                "-A FORWARD -i br-new -j ACCEPT",
                                                "-A FORWARD -i docker0 -j ACCEPT",
                                                "-A FORWARD -i foreign2 -j ACCEPT",
                                                "-A FORWARD -i br-x -j DROP"]


def test_duplicate_lines_are_counted_not_collapsed():
    # two host ports for one container port: Docker writes the same ACCEPT twice
    rule = "-A DOCKER -d 10.0.0.2/32 -p tcp -m tcp --dport 80 -j ACCEPT"
    want = _t({"DOCKER": "-"}, {"DOCKER": [rule, rule]})
    current = _t({"DOCKER": "-"}, {"DOCKER": ["-A DOCKER -d 9.9.9.9/32 -j ACCEPT"]})
    after = apply(current, reconcile.plan(want, current, []))
    assert after["filter"].rules["DOCKER"].count(rule) == 2
    last = reconcile.owned(want)
    one = _t({"DOCKER": "-"}, {"DOCKER": [rule]})
    after = apply(after, reconcile.plan(one, after, last))
    assert after["filter"].rules["DOCKER"] == ["-A DOCKER -d 9.9.9.9/32 -j ACCEPT", rule]


def test_an_existing_user_chain_is_never_declared():
    """``:CHAIN`` flushes an existing chain under --noflush: only missing chains are made."""
    current = _t({"DOCKER-USER": "-"}, {"DOCKER-USER": ["-A DOCKER-USER -s 1.2.3.4/32 -j DROP",
                                                        "-A DOCKER-USER -j RETURN"]})
    script = reconcile.plan(ENGINE, current, [])
    assert ":DOCKER-USER" not in script
    assert ":FORWARD DROP" in script


# ---- the real kernel ------------------------------------------------------------------------

def _rules(ns: str) -> list[str]:
    dump = nsexec.run(ns, ["iptables-save"]).stdout
    return [f"{t} {r}" for t, tab in reconcile.parse(dump).items()
            for rules in tab.rules.values() for r in rules]


def _missing(host_model, ns: str) -> list[str]:
    have = _rules(ns)
    return [r for r in reconcile.owned(reconcile.parse(IptablesFirewall().render(host_model)))
            if r not in have]


def _full_restore(self, host) -> None:
    """The broken setup: the old programming, which restored (flushed) whole tables."""
    nsexec.run(host.netns, ["iptables-restore"], input=self.render(host))


def _drive(plugin, call: str, body: dict) -> dict:
    status, answer = plugin.answer(call, body)
    assert status == 200, answer
    return answer


def _plugin_network(plugin, subnet: str, port: int | None = None) -> tuple[str, str]:
    """A network and a joined endpoint on cnmlab's bridge plugin, as Docker would make them."""
    from cnmlab.plugin import protocol as P

    nid, eid = uuid.uuid4().hex * 2, uuid.uuid4().hex * 2
    gw = subnet.rsplit(".", 1)[0] + ".1/24"
    _drive(plugin, P.CREATE_NETWORK, {"NetworkID": nid, "Options": {P.GENERIC_OPTIONS: {}},
                                      "IPv4Data": [{"AddressSpace": "LocalDefault",
                                                    "Pool": subnet, "Gateway": gw}]})
    _drive(plugin, P.CREATE_ENDPOINT, {"NetworkID": nid, "EndpointID": eid, "Interface": {
        "Address": subnet.rsplit(".", 1)[0] + ".2/24", "MacAddress": ""}})
    _drive(plugin, P.JOIN, {"NetworkID": nid, "EndpointID": eid, "SandboxKey": "/x/sb1"})
    if port:
        _drive(plugin, P.PROGRAM_EXTERNAL, {"NetworkID": nid, "EndpointID": eid, "Options": {
            P.PORTMAP: [{"Proto": 6, "Port": 80, "HostIP": "", "HostPort": port,
                         "HostPortEnd": port}]}})
    return nid, eid


def _plugin_teardown(plugin, nid: str, eid: str) -> None:
    from cnmlab.plugin import protocol as P

    for call in (P.REVOKE_EXTERNAL, P.LEAVE, P.DELETE_ENDPOINT):
        _drive(plugin, call, {"NetworkID": nid, "EndpointID": eid})
    _drive(plugin, P.DELETE_NETWORK, {"NetworkID": nid})


@pytest.mark.kernel
def test_engine_plugin_and_user_rules_share_a_host(lab):
    from cnmlab.plugin.adapter import DriverPlugin

    host = lab.add_host("h1")
    ns = host.netns
    plugin = DriverPlugin("bridge", ns)
    try:
        user = ["-I", "DOCKER-USER", "1", "-s", "192.0.2.99/32", "-j", "DROP"]
        nsexec.run(ns, ["iptables", *user])
        host.network_create("eng1", subnet="10.61.0.0/24")
        host.run("w1", "eng1", publish=["8081:80"])
        nid, eid = _plugin_network(plugin, "10.62.0.0/24", port=8082)
        host.network_create("eng2", subnet="10.63.0.0/24")  # the engine after the plugin
        assert _missing(host.model, ns) == [] and _missing(plugin.host, ns) == []
        have = _rules(ns)
        assert "filter -A DOCKER-USER -s 192.0.2.99/32 -j DROP" in have
        assert len(have) == len(set(have)), "a shared line was written twice"
        # each side removes its own, and only its own
        _plugin_teardown(plugin, nid, eid)
        assert _missing(host.model, ns) == []
        assert not [r for r in _rules(ns) if "10.62.0." in r or f"br-{nid[:12]}" in r]
        host.rm("w1")
        host.network_rm("eng1")
        assert not [r for r in _rules(ns) if "10.61.0." in r]
        assert _missing(host.model, ns) == []
        assert "filter -A DOCKER-USER -s 192.0.2.99/32 -j DROP" in _rules(ns)
    finally:
        plugin.close()


@pytest.mark.kernel
def test_the_old_whole_table_restore_wipes_the_plugins_rules(lab, monkeypatch):
    """The broken setup the coexistence check exists for: the engine restoring whole tables."""
    from cnmlab.plugin.adapter import DriverPlugin

    host = lab.add_host("h1")
    plugin = DriverPlugin("bridge", host.netns)
    try:
        _plugin_network(plugin, "10.64.0.0/24", port=8084)
        assert _missing(plugin.host, host.netns) == []
        monkeypatch.setattr(IptablesFirewall, "program", _full_restore)
        host.network_create("eng", subnet="10.65.0.0/24")
        lost = _missing(plugin.host, host.netns)
        assert any("DNAT" in r for r in lost) and any("MASQUERADE" in r for r in lost)
        monkeypatch.undo()
        # the reconciler puts a writer's own lines back when it next programs
        plugin.fw.program(plugin.host)
        assert _missing(plugin.host, host.netns) == []
    finally:
        plugin.close()


@pytest.mark.kernel
def test_every_rendered_line_reads_back_identically(lab):
    """The reconcile matches rules by text: what we render must be what iptables-save prints
    back, or every reprogramming would add a copy."""
    from test_firewall_golden import _host

    h = lab.add_host("h1", default_bridge=False, firewall="iptables")
    model = _host()
    model.netns = h.netns
    fw = IptablesFirewall()
    fw.program(model)
    assert _missing(model, h.netns) == []
    before = _rules(h.netns)
    fw.program(model)
    assert _rules(h.netns) == before


@pytest.mark.kernel
def test_a_failure_after_the_rules_went_in_takes_them_out(lab, monkeypatch):
    """The rules follow the model back when an operation fails after programming them (the
    old whole-table restore healed this at the next change; a reconcile must do it now)."""
    from cnmlab.controller import Controller
    from cnmlab.errors import CnmError

    host = lab.add_host("h1")
    host.network_create("app", subnet="10.66.0.0/24")
    real = Controller._program_firewall

    def then_fail(self):
        real(self)
        if any(e.ports for n in self.host.networks.values() for e in n.endpoints.values()):
            raise CnmError("injected: a later step of the join failed")

    monkeypatch.setattr(Controller, "_program_firewall", then_fail)
    with pytest.raises(CnmError, match="injected"):
        host.run("w1", "app", publish=["8086:80"])
    assert not [r for r in _rules(host.netns) if "8086" in r]
    assert not [r for r in host.model.firewall_rules if "8086" in r]
    assert _missing(host.model, host.netns) == []
    monkeypatch.undo()
    host.run("w1", "app", publish=["8086:80"])
    assert [r for r in _rules(host.netns) if "--dport 8086 -j DNAT" in r]
