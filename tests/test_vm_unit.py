"""Pure logic of ``cnmlab.vm``, fast (no VM): the initramfs archive, module order, the kernel
payload, the static-busybox check, the guest's scripts. The VM itself is tested in
test_vm.py, where every boot also proves these right."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from cnmlab.vm import boot, guest, image, initramfs, tools

def parse_newc(data: bytes) -> list[tuple[str, int, bytes, tuple[int, int]]]:
    """(name, mode, data, rdev) per entry, read back the way the kernel reads it."""
    out, pos = [], 0
    while True:
        head = data[pos:pos + 110]
        assert head[:6] == b"070701", head[:6]
        f = [int(head[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        mode, size, rdev, namesize = f[1], f[6], (f[9], f[10]), f[11]
        name = data[pos + 110:pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        body = data[pos:pos + size]
        pos += size + (-size % 4)
        if name == "TRAILER!!!":
            assert pos == len(data)
            return out
        out.append((name, mode, body, rdev))

def test_cpio_newc_round_trip_with_padding():
    entries = [initramfs.Entry("bin", stat.S_IFDIR | 0o755),
               initramfs.Entry("bin/x", stat.S_IFREG | 0o755, b"abc"),  # 3 bytes: padded
               initramfs.Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
               initramfs.Entry("init", stat.S_IFREG | 0o755, b"#!/bin/sh\n")]
    back = parse_newc(initramfs.cpio(entries))
    assert [(n, m, d, r) for n, m, d, r in back] == [(e.name, e.mode, e.data, e.rdev)
                                                      for e in entries]

def test_module_order_puts_dependencies_first(tmp_path):
    (tmp_path / "modules.dep").write_text(
        "kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko "
        "kernel/fs/netfs/netfs.ko\n"
        "kernel/net/9p/9pnet.ko:\n"
        "kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko\n"
        "kernel/fs/netfs/netfs.ko:\n"
        "kernel/net/9p/9pnet_virtio.ko: kernel/drivers/virtio/virtio.ko kernel/net/9p/9pnet.ko\n"
        "kernel/drivers/virtio/virtio.ko:\n")
    order = [n for n, _ in initramfs.module_order(str(tmp_path), ["9pnet_virtio", "9p"])]
    assert order == ["9pnet", "virtio", "9pnet_virtio", "netfs", "fscache", "9p"]
    with pytest.raises(FileNotFoundError, match="overlay"):
        initramfs.module_order(str(tmp_path), ["overlay"])

def test_static_busybox_is_told_from_a_dynamic_program():
    assert tools.is_static_elf(tools.BUSYBOX)          # busybox-static (install.sh)
    assert not tools.is_static_elf(os.path.realpath(sys.executable))
    assert not tools.is_static_elf(__file__)           # not an ELF at all

def test_inflate_gives_the_elf_kernel_of_the_cached_image():
    img = image.ensure()
    vmlinuz = os.path.join(img.dir, "boot", f"vmlinuz-{img.kver}")
    elf = image.inflate(vmlinuz)
    assert elf is not None and elf[:4] == b"\x7fELF"
    assert img.kernel.endswith("vmlinux")
    assert os.path.getsize(img.kernel) == len(elf)

def test_guest_env_drops_host_only_variables_and_puts_this_venv_first():
    env = boot.guest_env({"PATH": "/usr/bin:/bin", "TMUX": "/tmp/tmux-0/default,1,0",
                          "PYTEST_XDIST_WORKER": "gw0", "KEEP": "yes"})
    assert "TMUX" not in env and "PYTEST_XDIST_WORKER" not in env and env["KEEP"] == "yes"
    assert env["PATH"].split(":")[0] == os.path.dirname(sys.executable)
    assert env["CNMLAB_IN_VM"] == "1"

def test_job_script_quotes_what_it_is_given():
    script = guest.job_script(["printf", "%s|", "a b", "it's", "$(reboot)"], job="/tmp/j k",
                              cwd="/x y", env={"A": "b'c", "not valid": "dropped"},
                              terminal=False)
    # the command and the variables, parsed by a POSIX shell, come back verbatim
    lines = [l for l in script.splitlines() if l.startswith(("export ", "printf "))]
    r = subprocess.run(["sh", "-c", "\n".join(lines[:1]) + '\nprintf "%s" "$A"; echo; '
                        + lines[-1].split(" <")[0]], capture_output=True, text=True)
    assert r.stdout == "b'c\na b|it's|$(reboot)|"
    assert "not valid" not in script
