"""The encrypted overlay (``--opt encrypted``): ESP in transport mode between VTEPs.

As Docker 20.10's ``drivers/overlay/encryption.go`` does it, on each host's own namespace
(where the VXLAN socket lives):

* a mangle rule marks this network's VXLAN packets (UDP 4789 whose VNI field, found with
  ``u32``, is the network's) with ``0xD0C4E3``;
* per remote VTEP an outbound policy selects marked UDP 4789 to that VTEP and sends it through
  an ESP transport SA (``rfc4106(gcm(aes))``, 128-bit ICV), and a pair of SAs (out and in)
  holds the key; unmarked traffic (unencrypted overlays) passes as before.

Docker's managers hand out and rotate the keys; here one cluster-wide key is created once in
the control plane (``ipsec/key``) and carried with each encrypted network's declaration, and
each direction's SPI is derived from the two VTEP addresses. The inner MTU drops to 1424 (ESP
costs 26 bytes more). Needs ESP and GCM in the kernel (feature ``ipsec``).
"""
from __future__ import annotations

import secrets
import zlib
from typing import TYPE_CHECKING

from cnmlab import xfrm
from cnmlab.kernel import nsexec

if TYPE_CHECKING:
    from cnmlab.cluster import Cluster
    from cnmlab.driverapi import HostContext

OPT_ENCRYPTED = "encrypted"
OPT_KEY = "com.docker.network.overlay.ipsec.key"  # cnmlab's: Docker keeps keys out of options
MARK = 0xD0C4E3
ESP_OVERHEAD = 26
VXLAN_PORT = 4789


def cluster_key(cluster: "Cluster") -> str:
    """The cluster's one key (20 bytes hex: AES-128 + salt), made by the first asker."""
    key = f"{cluster.prefix}ipsec/key"
    cluster.store.create(key, secrets.token_hex(20))
    value = cluster.store.get(key)
    assert value
    return value


def spi(src: str, dst: str) -> int:
    """One SPI per direction, the same on both ends, never in the reserved 0-255."""
    return (zlib.crc32(f"{src}>{dst}".encode()) & 0x7FFFFFFF) | 0x100


def _mark_rule(vni: int) -> list[str]:
    return ["OUTPUT", "-p", "udp", "--dport", str(VXLAN_PORT), "-m", "u32", "--u32",
            f"0>>22&0x3C@12&0xFFFFFF00={vni << 8:#x}", "-j", "MARK", "--set-mark", hex(MARK)]


def prepare(ctx: "HostContext", vni: int) -> None:
    """Mark this network's VXLAN packets so the policies pick them (idempotent)."""
    ns = ctx.host.netns
    if nsexec.run(ns, ["iptables", "-w", "-t", "mangle", "-C", *_mark_rule(vni)],
                  check=False).returncode != 0:
        nsexec.run(ns, ["iptables", "-w", "-t", "mangle", "-A", *_mark_rule(vni)])


def remove(ctx: "HostContext", vni: int) -> None:
    nsexec.run(ctx.host.netns, ["iptables", "-w", "-t", "mangle", "-D", *_mark_rule(vni)],
               check=False)


def local_vtep(ctx: "HostContext") -> str:
    return ctx.host.underlay_ip or ctx.host.public_ip or ""


def add_peer(ctx: "HostContext", key: str, vtep: str) -> None:
    """SAs both ways and the outbound policy towards ``vtep``, once per remote host."""
    ns, me = ctx.host.netns, local_vtep(ctx)
    if xfrm.has_out_policy(ns, vtep):
        return
    have = {(s.src, s.dst, s.spi) for s in xfrm.states(ns)}
    for src, dst in ((me, vtep), (vtep, me)):
        if (src, dst, spi(src, dst)) not in have:
            xfrm.add_state(ns, src, dst, spi(src, dst), key)
    xfrm.add_out_policy(ns, me, vtep, spi(me, vtep), MARK, VXLAN_PORT)


def remove_peer(ctx: "HostContext", vtep: str) -> None:
    """Forget ``vtep`` (no encrypted network here has an endpoint there any more)."""
    ns, me = ctx.host.netns, local_vtep(ctx)
    xfrm.delete_out_policy(ns, me, vtep, MARK, VXLAN_PORT)
    for src, dst in ((me, vtep), (vtep, me)):
        xfrm.delete_state(ns, src, dst, spi(src, dst))
