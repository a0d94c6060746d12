"""Kernel features, probed by trying them in a throwaway namespace (configs lie, kernels differ).

Results are cached per kernel release under the state directory; labs and drivers declare what
they need and get a one-line ``FeatureMissing`` naming the feature and what to do instead.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil

from cnmlab.errors import CnmError, FeatureMissing
from cnmlab.kernel import netns, nsexec, rundir
from cnmlab.kernel.netlink import Netlink, ipvs_answers

DESCRIPTIONS = {
    "veth": "veth pairs (every lab)",
    "bridge": "Linux bridges (bridge driver)",
    "macvlan": "macvlan links (macvlan driver)",
    "ipvlan": "ipvlan links (ipvlan driver)",
    "vxlan": "VXLAN links (overlay driver)",
    "dummy": "dummy links (a parent-less macvlan/ipvlan network)",
    "vlan": "802.1Q VLAN sub-interfaces (macvlan/ipvlan trunks)",
    "ipvs": "IPVS load balancing (service VIPs, routing mesh)",
    "iptables": "iptables with NAT and addrtype (bridge firewall)",
    "nftables": "nftables (the nftables firewall backend)",
    "ipsec": "ESP with rfc4106(gcm(aes)) (encrypted overlay)",
}
REMEDY = ("this kernel lacks it: run it in the full-kernel VM ('cnmlab vm' opens the workshop "
          "there, 'cnmlab vm shell' a shell) or on a machine whose kernel has it")


def _link_probe(kind: str, nl: Netlink, **extra: object) -> bool:
    try:
        if kind == "veth":
            nl.add_veth("pv0", "pv1")
        else:
            nl.add_link(f"p{kind}"[:15], kind, **extra)
        return True
    except CnmError:
        return False


def _probe(name: str, ns: str) -> bool:
    with Netlink(ns) as nl:
        if name in ("veth", "bridge", "dummy", "vxlan"):
            extra = {"vxlan_id": 42} if name == "vxlan" else {}
            return _link_probe(name, nl, **extra)
        if name in ("macvlan", "ipvlan", "vlan"):
            # one parent each: a link holding a macvlan refuses an ipvlan ("Device is already
            # in use"), which would read as "no ipvlan" on a kernel that has it
            parent = f"pa{name}"[:15]
            nl.add_veth(parent, f"pb{name}"[:15])
            extra = {"vlan_id": 10} if name == "vlan" else {}
            return _link_probe(name, nl, link=nl.index(parent), **extra)
    if name == "ipvs":
        with netns.entered(ns):
            return ipvs_answers()
    if name == "iptables":
        if not shutil.which("iptables"):
            return False
        r = nsexec.run(ns, ["iptables", "-t", "nat", "-A", "POSTROUTING", "-m", "addrtype",
                            "--src-type", "LOCAL", "-j", "MASQUERADE"], check=False)
        return r.returncode == 0
    if name == "ipsec":
        return nsexec.run(ns, ["ip", "xfrm", "state", "add", "src", "192.0.2.1", "dst",
                               "192.0.2.2", "proto", "esp", "spi", "0x1000", "mode",
                               "transport", "aead", "rfc4106(gcm(aes))",
                               "0x" + "00" * 20, "128"], check=False).returncode == 0
    if name == "nftables":
        if not shutil.which("nft"):
            return False
        return nsexec.run(ns, ["nft", "add", "table", "ip", "probe"], check=False).returncode == 0
    raise FeatureMissing(f"unknown feature {name!r}")


def _cache_name() -> str:
    """Keyed by kernel release and by this module's own code: a cnmlab that probes differently
    (an upgrade, a fixed probe) must not trust what an older one found."""
    with open(__file__, "rb") as f:
        probes_digest = hashlib.sha256(f.read()).hexdigest()[:12]
    return f"_features-{os.uname().release}-{probes_digest}.json"


def probe_all(refresh: bool = False) -> dict[str, bool]:
    if not refresh:
        try:
            folder = rundir.readable_dir()
            if folder is not None:
                with open(os.path.join(folder, _cache_name())) as f:
                    return json.load(f)
        except (OSError, ValueError, CnmError):
            pass
    ns = f"cnmfeat-{secrets.token_hex(4)}"
    netns.create(ns)
    try:
        found = {name: _probe(name, ns) for name in DESCRIPTIONS}
    finally:
        netns.delete(ns)
    with open(os.path.join(rundir.state_dir(), _cache_name()), "w") as f:
        json.dump(found, f)
    return found


def has(name: str) -> bool:
    found = probe_all()
    if name not in found:  # a cache written before this feature was known
        found = probe_all(refresh=True)
    return found.get(name, False)


def require(names: list[str] | tuple[str, ...], what: str) -> None:
    missing = [n for n in names if not has(n)]
    if missing:
        raise FeatureMissing(f"{what} needs {', '.join(missing)} "
                             f"({'; '.join(DESCRIPTIONS.get(m, m) for m in missing)}): {REMEDY}")
