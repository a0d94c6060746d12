"""Names and addresses that several layers must agree on, written once.

The fake internet's addresses come from the documentation ranges (RFC 5737), so no lab can ever
address a real host; Docker's option keys are spelled exactly as ``docker network create -o``
takes them, so a lab file, the engine and the Docker target read the same words.
"""
from __future__ import annotations

# Every namespace cnmlab makes is called NS_PREFIX + <lab> + NS_SEP + <object>. Lab names cannot
# contain NS_SEP, so the first NS_SEP after the prefix ends the lab's name: no two labs' names
# can ever meet (with '-', lab x's host y-upstream and lab x-y's upstream were one namespace).
NS_PREFIX = "cnm-"
NS_SEP = "."

# The upstream namespace that plays "the internet".
UPSTREAM = "upstream"
UPSTREAM_SUBNET = "203.0.113.0/24"
UPSTREAM_GW = "203.0.113.1"
UPSTREAM_WEB = "198.51.100.10"
UPSTREAM_DNS = "198.51.100.53"
UPSTREAM_SERVICES = {"web": UPSTREAM_WEB, "dns": UPSTREAM_DNS}

# An underlay (a LAN hosts share): its switch and router live in one namespace.
UNDERLAY_BRIDGE = "sw0"  # the "physical switch"
UNDERLAY_UPLINK = "up0"  # the router's link into the upstream
UNDERLAY_HOST_BASE = 11  # hosts on an underlay get .11, .12, ... (the router is .1)

# Docker's embedded resolver address inside every sandbox on a user-defined network.
EMBEDDED_DNS = "127.0.0.11"

# Docker's network option keys (libnetwork's netlabel and bridge driver).
OPT_BRIDGE_NAME = "com.docker.network.bridge.name"
OPT_DEFAULT_BRIDGE = "com.docker.network.bridge.default_bridge"
OPT_ICC = "com.docker.network.bridge.enable_icc"
OPT_MASQUERADE = "com.docker.network.bridge.enable_ip_masquerade"
OPT_HOST_BINDING = "com.docker.network.bridge.host_binding_ipv4"
OPT_MTU = "com.docker.network.driver.mtu"

DEFAULT_BRIDGE_OPTIONS = {OPT_BRIDGE_NAME: "docker0",
                          OPT_DEFAULT_BRIDGE: "true",
                          OPT_ICC: "true",
                          OPT_MASQUERADE: "true",
                          OPT_HOST_BINDING: "0.0.0.0",
                          OPT_MTU: "1500"}

# Docker's gateway bridge: the egress of containers whose network has no gateway (overlay).
GWBRIDGE = "docker_gwbridge"
GWBRIDGE_OPTIONS = {OPT_BRIDGE_NAME: GWBRIDGE,
                    OPT_ICC: "false",
                    OPT_MASQUERADE: "true"}
GWBRIDGE_ENDPOINT = "gateway_"  # + the sandbox's short id, as libnetwork names it

# Where cnmlab's private dockerds keep their workdirs (not under /run: a daemon gets a tmpfs
# there); a lab run against real Docker has its daemon's socket at DOCKERD_DIR/<lab>/docker.sock.
DOCKERD_DIR = "/tmp/cnmlab-dockerd"
# where a lab's saved state keeps its control plane (etcd endpoint, netns)
CONTROL_PLANE_KEY = "control_plane"
INGRESS_CHAIN = "DOCKER-INGRESS"  # the routing mesh's chain (nat and filter) on every host
