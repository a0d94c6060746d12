"""Errors a user can act on.

Every error raised for bad input or a missing feature is a ``CnmError``: the CLI prints its
message as one line and exits non-zero, without a traceback. Anything else is a bug in cnmlab.
"""
from __future__ import annotations


def one_line(text: str) -> str:
    """``text`` with control characters (newlines from a YAML key, say) shown escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class CnmError(Exception):
    """A problem the user can fix; ``str(err)`` is the one-line message shown to them."""


class NotRootError(CnmError):
    pass


class FeatureMissing(CnmError):
    """The running kernel lacks something a lab or driver needs."""


class InvalidInput(CnmError):
    """A malformed topology file, option or name."""


class ObjectExists(CnmError):
    pass


class ObjectNotFound(CnmError):
    pass


class ActiveEndpoints(CnmError):
    """libnetwork refuses to delete a network that still has endpoints."""


class IpamError(CnmError):
    pass


class PoolOverlap(IpamError):
    pass


class AddressInUse(IpamError):
    pass


class PoolExhausted(IpamError):
    pass


class KernelError(CnmError):
    """A netlink or sysctl call failed; the message names the object and the errno text."""
