"""A sandbox's /etc files: written at once, or in the background inside ``deferred()`` with
the same result, in the same order, and every failure reported when the block ends."""
from __future__ import annotations

import os
import threading
import time

import pytest

from cnmlab.errors import CnmError, KernelError
from cnmlab.kernel import etcfiles


def _layout(tmp_path, monkeypatch, store: bool):
    monkeypatch.setattr(etcfiles, "ETC_NETNS", str(tmp_path / "netns"))
    monkeypatch.setattr(etcfiles, "STORE", str(tmp_path / "store"))
    monkeypatch.setattr(etcfiles, "_store_ok", store)
    return tmp_path / "netns"


@pytest.fixture(params=["store", "folders"])
def etc(request, tmp_path, monkeypatch):
    """/etc/netns in a temporary folder; the files in a store beside it (a tmpfs machine) or
    in folders under it (no tmpfs /dev/shm)."""
    return _layout(tmp_path, monkeypatch, request.param == "store")


@pytest.fixture
def store_etc(tmp_path, monkeypatch):
    return _layout(tmp_path, monkeypatch, True)


def read(etc, ns: str, name: str) -> str:
    with open(etc / ns / name) as f:
        return f.read()


def slow_writer(monkeypatch, wait) -> None:
    """The background writer calls ``wait()`` before each write: a busy disk, or held back
    until the test says so."""
    real = etcfiles._write_now

    def slow(ns, files):
        wait()
        real(ns, files)

    monkeypatch.setattr(etcfiles, "_write_now", slow)


@pytest.fixture
def app_host():
    """A real lab (its own namespaces, the real /etc/netns) with one host and network app."""
    from cnmlab.lab import Lab

    lab = Lab(f"etcb{os.getpid()}", upstream=False)
    try:
        h = lab.add_host("h1")
        h.network_create("app", subnet="10.231.77.0/24")
        yield lab, h
    finally:
        lab.down()


def test_written_at_once_outside_deferred(etc):
    etcfiles.write("cnm-a.s1", {"hosts": "h1\n", "resolv.conf": "nameserver 1.2.3.4\n"})
    assert read(etc, "cnm-a.s1", "hosts") == "h1\n"
    assert read(etc, "cnm-a.s1", "resolv.conf") == "nameserver 1.2.3.4\n"
    etcfiles.remove("cnm-a.s1")
    assert not (etc / "cnm-a.s1").exists()
    etcfiles.remove("cnm-a.s1")  # nothing there: no error


def test_files_on_tmpfs_behind_one_symlink_each(store_etc):
    """With a store, /etc/netns/NAME is one symlink into it (one entry on the disk), which
    removal takes away with its folder; a real folder an older cnmlab left is written in place,
    and a dangling link is replaced."""
    etc = store_etc
    store = etc.parent / "store"
    etcfiles.write("cnm-a.s1", {"hosts": "h\n"})
    assert os.path.islink(etc / "cnm-a.s1")
    assert os.readlink(etc / "cnm-a.s1") == str(store / "cnm-a.s1")
    assert read(etc, "cnm-a.s1", "hosts") == "h\n"
    assert oct(os.stat(store).st_mode & 0o777) == "0o700"  # private: /dev/shm is world-writable
    etcfiles.write("cnm-a.s1", {"hosts": "h2\n"})
    assert read(etc, "cnm-a.s1", "hosts") == "h2\n"
    etcfiles.remove("cnm-a.s1")
    assert not os.path.lexists(etc / "cnm-a.s1") and not (store / "cnm-a.s1").exists()

    (etc / "cnm-a.old").mkdir()  # an older cnmlab's folder
    etcfiles.write("cnm-a.old", {"hosts": "o\n"})
    assert not os.path.islink(etc / "cnm-a.old") and read(etc, "cnm-a.old", "hosts") == "o\n"
    etcfiles.remove("cnm-a.old")
    assert not os.path.lexists(etc / "cnm-a.old")

    os.symlink(str(store / "gone"), etc / "cnm-a.s2")  # dangling (e.g. after a reboot)
    etcfiles.write("cnm-a.s2", {"hosts": "x\n"})
    assert read(etc, "cnm-a.s2", "hosts") == "x\n"
    etcfiles.remove("cnm-a.s2")


def test_a_store_someone_else_made_is_refused(store_etc):
    store = store_etc.parent / "store"
    store.mkdir(mode=0o777)
    os.chmod(store, 0o777)  # writable by anyone: not ours alone
    with pytest.raises(CnmError, match="refusing to use"):
        etcfiles.write("cnm-a.s1", {"hosts": "h\n"})


def test_deferred_writes_land_in_order_by_the_end_of_the_block(etc):
    files = {"hosts": "first\n"}
    with etcfiles.deferred():
        etcfiles.write("cnm-a.s1", files)
        files["hosts"] = "changed after the call\n"  # the call took a copy
        etcfiles.write("cnm-a.s2", {"hosts": "s2 old\n"})
        etcfiles.remove("cnm-a.s2")  # removed and made again under the same name
        etcfiles.write("cnm-a.s2", {"hosts": "s2 new\n"})
        etcfiles.write("cnm-a.s3", {"hosts": "gone\n"})
        etcfiles.remove("cnm-a.s3")
    assert read(etc, "cnm-a.s1", "hosts") == "first\n"
    assert read(etc, "cnm-a.s2", "hosts") == "s2 new\n"
    assert not (etc / "cnm-a.s3").exists()


def test_nested_blocks_share_the_outer_one(etc):
    with etcfiles.deferred():
        with etcfiles.deferred():
            etcfiles.write("cnm-a.s1", {"hosts": "x\n"})
        # the inner block joined the outer one's writer: still deferred, still in order
        assert etcfiles._writer() is not None
        etcfiles.write("cnm-a.s1", {"hosts": "y\n"})
    assert etcfiles._writer() is None
    assert read(etc, "cnm-a.s1", "hosts") == "y\n"


def test_a_background_failure_is_raised_when_the_block_ends(etc):
    etc.mkdir()
    (etc / "cnm-a.s1").write_text("a file where the directory should be")
    with pytest.raises(KernelError, match="cnm-a.s1"):
        with etcfiles.deferred():
            etcfiles.write("cnm-a.s1", {"hosts": "x\n"})
            etcfiles.write("cnm-a.s2", {"hosts": "y\n"})
    # after the first failure nothing else was done in the background
    assert not (etc / "cnm-a.s2").exists()
    # and the next block starts afresh
    with etcfiles.deferred():
        etcfiles.write("cnm-a.s3", {"hosts": "z\n"})
    assert read(etc, "cnm-a.s3", "hosts") == "z\n"


def test_the_body_error_is_the_one_reported(etc):
    etc.mkdir()
    (etc / "cnm-a.s1").write_text("a file where the directory should be")
    with pytest.raises(ValueError, match="the caller's"):
        with etcfiles.deferred():
            etcfiles.write("cnm-a.s1", {"hosts": "x\n"})
            raise ValueError("the caller's")


def test_another_thread_still_writes_at_once(etc):
    """Deferral belongs to the thread that asked for it (a batch); another thread working on
    another lab meanwhile finds its files in place when its call returns."""
    seen: list[bool] = []

    def other() -> None:
        etcfiles.write("cnm-b.s1", {"hosts": "b\n"})
        seen.append(os.path.exists(etc / "cnm-b.s1" / "hosts"))

    with etcfiles.deferred():
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert seen == [True]


def test_settle_waits_for_this_threads_pending_writes(etc, monkeypatch):
    """A command run in a sandbox mid-batch (``ip netns exec`` mounts what is there when it
    starts) must find its files: ``settle`` waits for them; here the writer is held back
    until the caller is known to be waiting."""
    release = threading.Event()
    slow_writer(monkeypatch, lambda: release.wait(10))
    with etcfiles.deferred():
        etcfiles.write("cnm-a.s1", {"resolv.conf": "nameserver 127.0.0.11\n"})
        assert not (etc / "cnm-a.s1").exists()  # still queued
        threading.Timer(0.2, release.set).start()
        etcfiles.settle()
        assert read(etc, "cnm-a.s1", "resolv.conf") == "nameserver 127.0.0.11\n"
    etcfiles.settle()  # outside a block: nothing to wait for


def test_settle_from_another_thread_waits_for_a_batch_threads_writes(etc, monkeypatch):
    """The workshop app may open a shell from one thread while another runs a batch: the
    shell's ``ip netns exec`` must find the sandbox's files, whoever deferred them."""
    release = threading.Event()
    slow_writer(monkeypatch, lambda: release.wait(10))
    queued, finished = threading.Event(), threading.Event()

    def batch() -> None:
        with etcfiles.deferred():
            etcfiles.write("cnm-a.s1", {"hosts": "h\n"})
            queued.set()
            finished.wait(10)

    t = threading.Thread(target=batch)
    t.start()
    try:
        assert queued.wait(10)
        assert not (etc / "cnm-a.s1").exists()
        threading.Timer(0.2, release.set).start()
        etcfiles.settle()  # this thread defers nothing itself
        assert read(etc, "cnm-a.s1", "hosts") == "h\n"
    finally:
        release.set()
        finished.set()
        t.join()
    assert not etcfiles._active


def test_settle_reports_a_failure_instead_of_waiting_forever(etc):
    etc.mkdir()
    (etc / "cnm-a.s1").write_text("a file where the directory should be")
    with pytest.raises(KernelError):
        with etcfiles.deferred():
            etcfiles.write("cnm-a.s1", {"hosts": "x\n"})
            etcfiles.write("cnm-a.s2", {"hosts": "y\n"})
            etcfiles.settle()


def test_a_command_run_mid_batch_sees_the_sandboxs_own_files(monkeypatch, app_host):
    """In a real lab: inside a batch the files are written in the background (slowed down
    here, as on a busy disk), and a command run in the sandbox right after it was made still
    reads its own resolv.conf and hosts."""
    lab, h = app_host
    slow_writer(monkeypatch, lambda: time.sleep(0.3))
    with lab.batch():
        sb = h.run("c1", "app")
        out = sb.exec(["cat", "/etc/resolv.conf", "/etc/hosts"]).stdout
    assert "nameserver 127.0.0.11" in out
    assert f"{sb.ip('app')}\t" in out
    h.rm("c1")
    assert not os.path.lexists(os.path.join("/etc/netns", sb.netns))


def test_a_batch_saves_its_model_only_once_the_files_are_on_disk(monkeypatch, app_host):
    """Another process that reads the saved model (``cnmlab exec`` from a second terminal)
    must find every sandbox it names with its files: the batch waits for them before saving."""
    lab, h = app_host
    slow_writer(monkeypatch, lambda: time.sleep(0.05))
    saves: list[list[bool]] = []
    write = lab._write

    def checked_write() -> None:
        saves.append([os.path.exists(os.path.join(etcfiles.ETC_NETNS, sb.netns, "hosts"))
                      for host in lab.state.hosts.values()
                      for sb in host.sandboxes.values() if sb.netns])
        write()

    monkeypatch.setattr(lab, "_write", checked_write)
    with lab.batch():
        for i in range(4):
            h.run(f"c{i}", "app")
    assert saves and saves[0] == [True] * 4, saves
