"""The kernel layer: the only code that talks to the Linux kernel.

``netns`` makes, enters and removes network namespaces; ``netlink`` is the one facade over
pyroute2 (links, addresses, routes, neighbours, FDB, change events); ``sysctl`` and ``neigh``
read and write sysctls (``neigh``: the global neighbour-table limits); ``nsexec`` runs a
program inside a namespace; ``capture`` opens packet sockets; ``features`` probes what this
kernel can do. Nothing here knows about labs, networks or drivers: the engine above does.
"""
