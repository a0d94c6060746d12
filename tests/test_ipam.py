"""IPAM: Docker's default pools, first-free addresses, explicit subnets and ranges, errors."""
import ipaddress

import pytest

from cnmlab.errors import AddressInUse, InvalidInput, PoolExhausted, PoolOverlap
from cnmlab.ipam import LOCAL_DEFAULT, DefaultIpam, default_local_pools


def test_default_pools_follow_dockers_order():
    pools = [str(p) for p in default_local_pools()]
    assert pools[:4] == ["172.17.0.0/16", "172.18.0.0/16", "172.19.0.0/16", "172.20.0.0/16"]
    assert pools[14] == "172.31.0.0/16"
    assert pools[15:17] == ["192.168.0.0/20", "192.168.16.0/20"]
    assert len(pools) == 15 + 16


def test_pools_first_fit_and_gateway_then_containers():
    ipam = DefaultIpam()
    pid1, pool1 = ipam.request_pool(LOCAL_DEFAULT)
    pid2, pool2 = ipam.request_pool(LOCAL_DEFAULT)
    assert (pool1, pool2) == ("172.17.0.0/16", "172.18.0.0/16")
    assert pid2 == "LocalDefault/172.18.0.0/16"
    assert [ipam.request_address(pid2) for _ in range(3)] == ["172.18.0.1", "172.18.0.2",
                                                               "172.18.0.3"]
    ipam.release_address(pid2, "172.18.0.2")
    assert ipam.request_address(pid2) == "172.18.0.2"
    ipam.release_pool(pid1)
    assert ipam.request_pool(LOCAL_DEFAULT)[1] == "172.17.0.0/16"


def test_explicit_subnet_skips_it_in_defaults_and_overlap_is_refused():
    ipam = DefaultIpam()
    ipam.request_pool(LOCAL_DEFAULT, "172.17.5.0/24")
    assert ipam.request_pool(LOCAL_DEFAULT)[1] == "172.18.0.0/16"
    with pytest.raises(PoolOverlap, match="Pool overlaps with other one on this address space"):
        ipam.request_pool(LOCAL_DEFAULT, "172.17.0.0/16")


def test_ip_range_gives_addresses_from_the_range():
    ipam = DefaultIpam()
    pid, _ = ipam.request_pool(LOCAL_DEFAULT, "10.1.0.0/16", "10.1.5.0/24")
    assert pid == "LocalDefault/10.1.0.0/16/10.1.5.0/24"
    assert ipam.request_address(pid) == "10.1.5.0"  # 10.1.5.0 is a host address in a /16
    assert ipam.request_address(pid) == "10.1.5.1"
    with pytest.raises(InvalidInput, match="not inside subnet"):
        ipam.request_pool(LOCAL_DEFAULT, "10.2.0.0/16", "10.3.0.0/24")


def test_specific_address_in_use_and_reserved():
    ipam = DefaultIpam()
    pid, _ = ipam.request_pool(LOCAL_DEFAULT, "10.9.0.0/29")
    assert ipam.request_address(pid, "10.9.0.5") == "10.9.0.5"
    with pytest.raises(AddressInUse, match="Address already in use"):
        ipam.request_address(pid, "10.9.0.5")
    with pytest.raises(AddressInUse):
        ipam.request_address(pid, "10.9.0.7")  # broadcast
    got = [ipam.request_address(pid) for _ in range(5)]
    assert got == ["10.9.0.1", "10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.6"]
    with pytest.raises(PoolExhausted):
        ipam.request_address(pid)


def test_defaults_exhaust_with_dockers_message():
    ipam = DefaultIpam([ipaddress.IPv4Network("172.17.0.0/16")])
    ipam.request_pool(LOCAL_DEFAULT)
    with pytest.raises(PoolExhausted, match="non-overlapping IPv4 address pool"):
        ipam.request_pool(LOCAL_DEFAULT)


def test_bad_subnet_text():
    with pytest.raises(InvalidInput, match="not a valid IPv4 subnet"):
        DefaultIpam().request_pool(LOCAL_DEFAULT, "10.0.0.1/33")
