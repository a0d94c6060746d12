"""libnetwork's plugin protocols, both ways: cnmlab calls remote drivers and IPAMs, and serves them.

JSON over HTTP on a unix socket, as Docker speaks it (``docs/remote.md``, ``docs/ipam.md``,
``drivers/remote/api/api.go``): ``protocol`` holds the names, ``client`` makes calls with
timeouts and one-line errors, ``discovery`` finds a plugin by name the way Docker does, and
``sdk`` is the small server a learner subclasses to write a driver of their own.
"""
