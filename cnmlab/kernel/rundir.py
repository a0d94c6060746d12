"""Where cnmlab keeps its records, and private runtime folders: root acts on no file another
user could have planted.

cnmlab runs as root and keeps its records in one folder on the /run tmpfs (``STATE_DIR``,
``$CNMLAB_STATE_DIR``): the kernel layer's machine-wide ones (neighbour-table reservations,
the feature-probe cache) and the engine's lab state files. /run is emptied at boot, which is
right: every kernel object they describe is gone after a reboot too.

It writes there and in the dockerd harness's work folders under fixed paths (/run/cnmlab,
/tmp/cnmlab-dockerd). In a world-writable parent such as /tmp, any user can create that path
first, as a folder of their own or a symlink, and have root follow their links or read their
forged state. So every such folder is made mode 0700 and, before each use, checked to be a
real folder (not a symlink) owned by us (root) that nobody else can write to. A folder of ours
that others can only read (0755, what cnmlab made before) is tightened to 0700: no one else
could have written into it. Anything else is refused with a one-line error; cnmlab never
repairs or deletes a folder that is not its own.
"""
from __future__ import annotations

import os
import stat

from cnmlab.errors import CnmError

STATE_DIR = os.environ.get("CNMLAB_STATE_DIR", "/run/cnmlab")


class UnsafeRunDir(CnmError):
    """A runtime folder is not ours alone (another owner, writable by others, a symlink)."""


def private_dir(path: str) -> str:
    """Create ``path`` (mode 0700) or check the existing one is ours alone; return ``path``.

    The parent must exist (``/run``, ``/tmp``, or a private folder checked the same way).
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        raise UnsafeRunDir(f"cannot create {path}: its parent folder does not exist") from None
    check_private(path)
    return path


def check_private(path: str) -> None:
    """Refuse a folder that another user owns, may write to, or that is a symlink."""
    try:  # opened, not merely stat'ed: the checks and the chmod apply to one and the same inode
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        fd = -1
    try:
        _check(path, fd)
    finally:
        if fd >= 0:
            os.close(fd)


def _check(path: str, fd: int) -> None:
    st = os.fstat(fd) if fd >= 0 else os.lstat(path)
    me = os.geteuid()
    who = "root" if me == 0 else f"uid {me}"
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeRunDir(f"refusing to use {path}: it is a symlink; remove it "
                           f"(cnmlab makes it as a private folder)")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeRunDir(f"refusing to use {path}: it is not a folder; remove it")
    if st.st_uid != me:
        raise UnsafeRunDir(f"refusing to use {path}: owned by uid {st.st_uid}, not {who}; "
                           f"someone else made it: inspect and remove it")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        raise UnsafeRunDir(f"refusing to use {path}: mode {mode:04o} lets other users write "
                           f"into it (want 0700): inspect its files, then remove it")
    if mode & 0o077:  # ours and never writable by others: only tighten it
        if fd >= 0:
            os.fchmod(fd, 0o700)
        else:
            os.chmod(path, 0o700)


def state_dir() -> str:
    """The state folder, made private (root-owned, 0700) or refused if someone else's."""
    parent = os.path.dirname(os.path.abspath(STATE_DIR))
    if not os.path.isdir(parent):
        os.makedirs(parent, exist_ok=True)
    return private_dir(STATE_DIR)


def readable_dir() -> str | None:
    """The state folder for reading: None if there is none; root reads only a private one."""
    if not os.path.lexists(STATE_DIR):
        return None
    if os.geteuid() == 0:
        check_private(STATE_DIR)
    return STATE_DIR
