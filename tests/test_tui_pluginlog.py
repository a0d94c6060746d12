"""The plugin call log, read as it grows and shown live in the workshop app (``PluginLog``).

A real plugin served with the SDK on its real socket; the calls come through the same client
the engine uses. The panel must show every call with its JSON, in order, errors marked, follow
a plugin served again, and the step screen must offer it as a tab.
"""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from cnmlab.plugin import discovery
from cnmlab.plugin import protocol as P
from cnmlab.plugin.calllog import CallLogReader, logs
from cnmlab.plugin.client import PluginClient
from cnmlab.plugin.sdk import NetworkDriver, PluginServer
from cnmlab.workshop import labfile
from cnmlab.workshop.runner import LabRun

PID = os.getpid()

if os.geteuid() != 0:
    pytest.skip("serving a plugin needs root (/run/cnmlab/plugins)", allow_module_level=True)


class Picky(NetworkDriver):
    """Answers CreateNetwork for one pool only: an error is part of the log too."""

    def create_network(self, req):
        if req["IPv4Data"][0]["Pool"] != "10.1.0.0/24":
            raise ValueError(f"pool {req['IPv4Data'][0]['Pool']} is not mine")
        return {}


def _net(pool: str) -> dict:
    return {"NetworkID": "n" * 64, "IPv4Data": [{"Pool": pool, "Gateway": "10.1.0.1/24"}]}


@pytest.fixture
def picky():
    name = f"tpl{PID}-drv"
    servers = []

    def serve() -> PluginServer:
        srv = PluginServer(Picky(), discovery.socket_path(name)).start()
        servers.append(srv)
        return srv

    yield name, serve
    for srv in servers:
        srv.close()
    discovery.clean_stale()


def test_the_reader_returns_what_was_added_and_notices_a_restart(picky):
    name, serve = picky
    srv = serve()
    client = PluginClient(name, srv.socket_path)
    reader = CallLogReader(name)
    assert reader.read() == []
    client.call(P.ACTIVATE)
    client.call(P.GET_CAPABILITIES)
    first = reader.read()
    assert [c.call for c in first] == [P.ACTIVATE, P.GET_CAPABILITIES]
    assert first[0].answer == {"Implements": ["NetworkDriver"]} and not reader.restarted
    with pytest.raises(Exception):
        client.call(P.CREATE_NETWORK, _net("10.2.0.0/24"))
    (bad,) = reader.read()
    assert bad.error == "pool 10.2.0.0/24 is not mine"
    assert bad.request["IPv4Data"][0]["Pool"] == "10.2.0.0/24"
    # half a line (a write in progress) waits for its newline
    with open(reader.path, "ab") as f:
        f.write(b'{"time": 1, "call": "NetworkDriver.Leave", "request": {}, ')
    assert reader.read() == []
    with open(reader.path, "ab") as f:
        f.write(b'"answer": {}}\n')
    assert [c.call for c in reader.read()] == ["NetworkDriver.Leave"]
    assert name in logs()
    srv.close()
    srv = serve()  # served again: a fresh, shorter log
    PluginClient(name, srv.socket_path).call(P.ACTIVATE)
    again = reader.read()
    assert reader.restarted and [c.call for c in again] == [P.ACTIVATE]


def _app(lab_name: str):
    from textual.app import App

    import cnmlab.tui as tui_pkg
    from cnmlab.tui.pluginlog import PluginLog

    class LogApp(App):
        CSS_PATH = [Path(tui_pkg.__file__).parent / "widgets.tcss"]

        def compose(self):
            yield PluginLog(lab_name, id="pl")

    return LogApp()


async def _until(pilot, cond, timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


def test_the_panel_shows_every_call_live_in_order(picky):
    from textual.widgets import RichLog

    from cnmlab.tui.pluginlog import PluginLog

    name, serve = picky
    srv = serve()
    client = PluginClient(name, srv.socket_path)

    async def main() -> None:
        app = _app(f"tpl{PID}")
        async with app.run_test(size=(120, 40)) as pilot:
            panel = app.query_one(PluginLog)
            await _until(pilot, lambda: panel.plugin == name, what="the lab's plugin chosen")
            client.call(P.ACTIVATE)
            client.call(P.GET_CAPABILITIES)
            client.call(P.CREATE_NETWORK, _net("10.1.0.0/24"))
            try:
                client.call(P.CREATE_NETWORK, _net("10.3.0.0/24"))
            except Exception:
                pass
            await _until(pilot, lambda: len(panel.calls) == 4, what="four calls shown")
            assert [c.call.split(".")[1] for c in panel.calls] == [
                "Activate", "GetCapabilities", "CreateNetwork", "CreateNetwork"]
            text = "\n".join(str(line.text) for line in app.query_one("#pl-log", RichLog).lines)
            assert '"Pool": "10.1.0.0/24"' in text and '{"Implements": ["NetworkDriver"]}' in text
            assert '{"Err": "pool 10.3.0.0/24 is not mine"}' in text
            status = str(app.query_one("#pl-status").render())
            assert "4 calls, 1 answered an error" in status
            # served again: the panel says so and keeps following
            srv.close()
            srv2 = serve()
            PluginClient(name, srv2.socket_path).call(P.ACTIVATE)
            await _until(pilot, lambda: len(panel.calls) == 5, what="the call after a restart")
            text = "\n".join(str(line.text) for line in app.query_one("#pl-log", RichLog).lines)
            assert "served again" in text

    asyncio.run(main())


@pytest.mark.kernel
def test_the_step_screen_has_the_plugins_tab(tmp_path, monkeypatch):
    from cnmlab.tui.app import CnmlabApp
    from cnmlab.tui.screens import LabListScreen, StepScreen

    monkeypatch.setenv("CNMLAB_PROGRESS", str(tmp_path / "progress.json"))
    app = CnmlabApp(instance_suffix=str(PID), live=True,
                    features={"veth": True, "bridge": True, "iptables": True})

    async def main() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await _until(pilot, lambda: isinstance(app.screen, LabListScreen), 10, "lab list")
            await pilot.press("enter")  # lab 01, the first in the list
            await _until(pilot, lambda: isinstance(app.screen, StepScreen), 60, "step screen")
            screen = app.screen
            await pilot.press("5")
            await _until(pilot, lambda: screen.query("#tab-plugins .live-view"), 10,
                         "the plugin log")
            assert type(screen.query_one("#tab-plugins .live-view")).__name__ == "PluginLog"

    try:
        asyncio.run(main())
    finally:
        labdef = labfile.get("01")
        LabRun(labdef, f"{labdef.default_name}-{PID}").stop()
