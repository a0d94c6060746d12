"""IPsec (XFRM) states and policies in a namespace, through ``ip xfrm``.

The kernel layer's small door to XFRM: pyroute2 has no typed XFRM API, and iproute2's ``ip
xfrm`` is what a learner types to look at the same objects, so this module speaks it (inside
the namespace, with nsenter) and parses its one-line output. ESP in transport mode with
``rfc4106(gcm(aes))``, as Docker's encrypted overlay programs between VTEPs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from cnmlab.kernel import nsexec

AEAD = "rfc4106(gcm(aes))"
ICV_BITS = 128


@dataclass(frozen=True)
class State:
    src: str
    dst: str
    spi: int


def add_state(ns: str, src: str, dst: str, spi: int, key_hex: str) -> None:
    """An ESP transport SA src -> dst; ``key_hex`` is 20 bytes: AES-128 key + 4-byte salt."""
    nsexec.run(ns, ["ip", "xfrm", "state", "add", "src", src, "dst", dst, "proto", "esp",
                    "spi", hex(spi), "reqid", str(spi), "mode", "transport",
                    "aead", AEAD, f"0x{key_hex}", str(ICV_BITS)])


def delete_state(ns: str, src: str, dst: str, spi: int) -> None:
    nsexec.run(ns, ["ip", "xfrm", "state", "delete", "src", src, "dst", dst, "proto", "esp",
                    "spi", hex(spi)], check=False)


def states(ns: str) -> list[State]:
    out = nsexec.run(ns, ["ip", "-o", "xfrm", "state", "list"]).stdout
    found = []
    for line in out.splitlines():
        line = line.replace("\\", " ")  # -o marks each folded line break with a backslash
        m = re.search(r"src (\S+) dst (\S+).*?proto esp spi (0x[0-9a-f]+)", line)
        if m:
            found.append(State(m[1], m[2], int(m[3], 16)))
    return found


def add_out_policy(ns: str, src: str, dst: str, spi: int, mark: int, dport: int) -> None:
    """Encrypt what goes to ``dst`` on UDP ``dport`` *and carries ``mark``* (only the
    encrypted networks' VXLAN is marked), with the SA of ``spi``."""
    nsexec.run(ns, ["ip", "xfrm", "policy", "add", "src", f"{src}/32", "dst", f"{dst}/32",
                    "proto", "udp", "dport", str(dport), "dir", "out",
                    "mark", hex(mark), "mask", "0xffffffff",
                    "tmpl", "src", src, "dst", dst, "proto", "esp", "spi", hex(spi),
                    "reqid", str(spi), "mode", "transport"])


def delete_out_policy(ns: str, src: str, dst: str, mark: int, dport: int) -> None:
    nsexec.run(ns, ["ip", "xfrm", "policy", "delete", "src", f"{src}/32", "dst", f"{dst}/32",
                    "proto", "udp", "dport", str(dport), "dir", "out",
                    "mark", hex(mark), "mask", "0xffffffff"], check=False)


def has_out_policy(ns: str, dst: str) -> bool:
    out = nsexec.run(ns, ["ip", "-o", "xfrm", "policy", "list", "dir", "out"]).stdout
    return any(f"dst {dst}/32" in line.replace("\\", " ") for line in out.splitlines())
