"""The TUI's "what would Docker have built here?" (D) against real Docker 20.10.

Lab 02 names the default-bridge scenario. After step 1 is solved (docker0 built), D runs the
scenario on a throwaway dockerd in a worker and shows the differences in a dialog: what the
learner built as Docker does (docker0's address) is no difference; what is not built yet
(c1's eth0, Docker's NAT rules) is named on Docker's side. A lab that names no scenario has
no D key. Nothing is left behind (the conftest guards check namespaces and daemons).
"""
from __future__ import annotations

import asyncio
import os

import pytest

from cnmlab.checks import dockerd
from cnmlab.checks.dockerd import missing_tools
from cnmlab.tui.dockerdiff import DockerDiffScreen
from tests.test_tui_app import FEATURES, RecordingApp, open_lab, plain, stop_lab, wait_for
from tests.test_tui_learner import solve_current

_missing = missing_tools()
pytestmark = [pytest.mark.kernel, pytest.mark.docker,
              pytest.mark.skipif(bool(_missing), reason=f"real Docker not installed: missing "
                                                        f"{', '.join(_missing)}")]


@pytest.fixture(autouse=True)
def progress_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CNMLAB_PROGRESS", str(tmp_path / "progress.json"))


def test_d_shows_what_docker_would_have_built():
    app = RecordingApp(features=FEATURES)
    seen: dict[str, str] = {}

    async def scenario() -> None:
        async with app.run_test(size=(140, 40)) as pilot:
            screen = await open_lab(pilot, app, 2)
            assert screen.check_action("docker_diff", ()) is True
            await solve_current(pilot, screen)  # docker0 with 172.17.0.1/16
            await pilot.press("D")
            await wait_for(pilot, lambda: screen.busy == "asking Docker", 5, "busy")
            await wait_for(pilot, lambda: isinstance(app.screen, DockerDiffScreen)
                           and app.screen.query("#diff-lines") or app.errors(), 180,
                           "the Docker diff")
            assert not app.errors(), app.errors()
            dialog = app.screen
            seen["summary"] = plain(dialog.query_one("#diff-summary"), width=200)
            seen["lines"] = plain(dialog.query_one("#diff-lines"), width=200)
            seen["title"] = str(dialog.query_one("#diff-box").border_title)
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.screen is screen, 5, "back")
            assert screen.busy == ""

    try:
        asyncio.run(scenario())
    finally:
        stop_lab("02")
    lines = seen["lines"]
    assert seen["title"] == "What would Docker have built on host?"
    assert "differences" in seen["summary"] and "- only yours" in seen["summary"]
    assert "$ docker run -d --name c2 -p 8080:80 busybox" in lines
    # not built yet: named on Docker's side, in its section
    assert "[c1 addresses]" in lines and "+ eth0 172.17.0.2/16 brd 172.17.255.255 scope global" \
        in lines, lines
    assert "+ -A POSTROUTING -s 172.17.0.0/16 ! -o <br:bridge> -j MASQUERADE" in lines, lines
    # built as Docker does (the learner's docker0, by role <br:bridge>): no difference
    assert "[host addresses]" not in lines, lines
    assert not [d for d in os.listdir(dockerd.DAEMONS_DIR) if d.startswith(f"df{os.getpid()}")] \
        if os.path.isdir(dockerd.DAEMONS_DIR) else True


def test_no_d_key_in_a_lab_without_a_scenario():
    app = RecordingApp(features=FEATURES)

    async def scenario() -> None:
        async with app.run_test(size=(140, 40)) as pilot:
            screen = await open_lab(pilot, app, 1)
            assert screen.labdef.docker_diff is None
            assert screen.check_action("docker_diff", ()) is False
            await pilot.press("D")
            await pilot.pause(0.3)
            assert screen.busy == "" and not isinstance(app.screen, DockerDiffScreen)

    try:
        asyncio.run(scenario())
    finally:
        stop_lab("01")
