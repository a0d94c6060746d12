#!/usr/bin/env bash
# One etcd member (Debian's etcd-server) as the overlay labs' shared store, on the private
# network only: clients and peers on $IP, never the wildcard address and never the NAT interface.
# Usage: etcd.sh NAME IP    (run as root on the first VM, after scripts/install.sh)
set -euo pipefail
name=$1 ip=$2
export DEBIAN_FRONTEND=noninteractive
dpkg-query -W -f='${Status}' etcd-server 2>/dev/null | grep -q "install ok installed" || {
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends etcd-server etcd-client >/dev/null
}
cat >/etc/default/etcd <<CONF
# Written by cnmlab's vagrant/multi/etcd.sh: the overlay labs' store, private network only.
ETCD_NAME=$name
ETCD_DATA_DIR=/var/lib/etcd/cnmlab
ETCD_LISTEN_CLIENT_URLS=http://$ip:2379
ETCD_ADVERTISE_CLIENT_URLS=http://$ip:2379
ETCD_LISTEN_PEER_URLS=http://$ip:2380
ETCD_INITIAL_ADVERTISE_PEER_URLS=http://$ip:2380
ETCD_INITIAL_CLUSTER=$name=http://$ip:2380
ETCD_INITIAL_CLUSTER_STATE=new
CONF
systemctl enable --quiet etcd
systemctl restart etcd
for _ in $(seq 1 30); do
  ETCDCTL_API=3 etcdctl --endpoints="http://$ip:2379" endpoint health >/dev/null 2>&1 && {
    echo "etcd: serving on http://$ip:2379 (private network only)"; exit 0; }
  sleep 1
done
echo "etcd.sh: etcd did not answer on http://$ip:2379; see journalctl -u etcd" >&2
exit 1
