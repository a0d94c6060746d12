"""The host firewall behind one interface, so an nftables backend can follow iptables.

A backend renders the *whole* Docker-managed ruleset of a host from the model, so tests
compare the rendered rules with golden text, as libnetwork's ``iptabler_test.go`` does; it
then reconciles the namespace with that rendering in one atomic step, touching only the rules
this model rendered before (``cnmlab.firewall.reconcile``): what a user put in DOCKER-USER,
dockerd's own rules and those of a bridge plugin sharing the namespace all survive.
"""
from __future__ import annotations

from typing import Protocol

from cnmlab.errors import InvalidInput
from cnmlab.model import Host


class Firewall(Protocol):
    name: str

    def render(self, host: Host) -> str:
        """The ruleset the host should have, in the backend's own save format."""

    def program(self, host: Host) -> None:
        """Install ``render(host)`` in the host's namespace, keeping everyone else's rules."""

    def dump(self, ns: str) -> str:
        """What the namespace has now, as a Docker user would read it (``iptables -S``)."""


def get(name: str) -> Firewall:
    from cnmlab.firewall.iptables import IptablesFirewall

    registry: dict[str, type] = {"iptables": IptablesFirewall}
    try:
        return registry[name]()
    except KeyError:
        raise InvalidInput(f"unknown firewall backend {name!r}; known: {', '.join(registry)}") from None
