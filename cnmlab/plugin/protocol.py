"""The plugin protocol's names, written once (libnetwork ``drivers/remote/api``, ``ipams/remote/api``)."""
from __future__ import annotations

CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"

ACTIVATE = "Plugin.Activate"
NETWORK_DRIVER = "NetworkDriver"
IPAM_DRIVER = "IpamDriver"

# NetworkDriver calls (libnetwork's remote driver), in lifecycle order
GET_CAPABILITIES = "NetworkDriver.GetCapabilities"
CREATE_NETWORK = "NetworkDriver.CreateNetwork"
DELETE_NETWORK = "NetworkDriver.DeleteNetwork"
CREATE_ENDPOINT = "NetworkDriver.CreateEndpoint"
ENDPOINT_INFO = "NetworkDriver.EndpointOperInfo"
JOIN = "NetworkDriver.Join"
PROGRAM_EXTERNAL = "NetworkDriver.ProgramExternalConnectivity"
REVOKE_EXTERNAL = "NetworkDriver.RevokeExternalConnectivity"
LEAVE = "NetworkDriver.Leave"
DELETE_ENDPOINT = "NetworkDriver.DeleteEndpoint"
DISCOVER_NEW = "NetworkDriver.DiscoverNew"
DISCOVER_DELETE = "NetworkDriver.DiscoverDelete"

# IpamDriver calls
IPAM_CAPABILITIES = "IpamDriver.GetCapabilities"
IPAM_SPACES = "IpamDriver.GetDefaultAddressSpaces"
REQUEST_POOL = "IpamDriver.RequestPool"
RELEASE_POOL = "IpamDriver.ReleasePool"
REQUEST_ADDRESS = "IpamDriver.RequestAddress"
RELEASE_ADDRESS = "IpamDriver.ReleaseAddress"

# the error field differs between the two APIs: drivers answer "Err", IPAM drivers "Error"
ERROR_FIELD = {NETWORK_DRIVER: "Err", IPAM_DRIVER: "Error"}

GATEWAY_REQUEST = {"RequestAddressType": "com.docker.network.gateway"}
GENERIC_OPTIONS = "com.docker.network.generic"  # the network's -o options
INTERNAL = "com.docker.network.internal"  # --internal, in CreateNetwork's Options
PORTMAP = "com.docker.network.portmap"  # -p, in the endpoint calls' Options
EXPOSED_PORTS = "com.docker.network.endpoint.exposedports"
PROTO_NUMBERS = {"tcp": 6, "udp": 17}  # types.PortBinding's Proto
