"""``cnmlab clean``: remove every lab the engine made on the machine, and nothing else.

It works from the state files alone (namespaces are recorded before they are created), so it
also cleans up after a ``kill -9``. Everything a lab made lives inside its namespaces, so
deleting them (after stopping their processes) removes links, routes and rules with them. The
one exception, a namespace a lab borrowed (``conform --target plugin:SOCKET`` adopts a running
plugin's), is never deleted: it is put back as it was recorded before the lab touched it
(``cnmlab.adopted``).
(The Docker daemons ``cnmlab conform`` starts belong to the checks; the ``clean`` command
sweeps them too, from the CLI, which sits above both.)
"""
from __future__ import annotations

from cnmlab import state
from cnmlab.errors import InvalidInput
from cnmlab.kernel import neigh
from cnmlab.lab import teardown
from cnmlab.model import LabState
from cnmlab.plugin import discovery


def clean(only: list[str] | None = None) -> list[str]:
    """Tear down every recorded lab (or only the named ones); return the namespaces removed
    (``clean_plugin_sockets`` sweeps the dead plugins' sockets, the CLI reports both)."""
    removed: list[str] = []
    for name in state.names():
        if only and name not in only:
            continue
        try:
            lab_state = state.load(name)
        except InvalidInput:  # damaged, or a model from another version: the log is enough
            lab_state = LabState(name=name, namespaces=state.recorded_namespaces(name))
        removed += teardown(name, lab_state)
    if only:
        return removed
    if not state.names():
        neigh.release_all()
    return removed


def clean_plugin_sockets() -> list[str]:
    """Sockets of plugins killed before they removed them (a plugin served in a lab's host
    dies with its namespaces): nothing listens on them, so they are nobody's, whichever lab."""
    return discovery.clean_stale()
