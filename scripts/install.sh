#!/usr/bin/env bash
# Install cnmlab on Debian 12 as root: the apt packages it drives, a virtualenv in .venv with
# cnmlab installed (editable), and /usr/local/bin/cnmlab. With --test: the test extras too.
set -euo pipefail
cd "$(dirname "$0")/.."
want_tests=0
[ "${1:-}" = "--test" ] && want_tests=1

if [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (sudo bash scripts/install.sh)" >&2
  exit 1
fi

APT_PACKAGES=(
  python3 python3-venv python3-pip          # the runtime
  iproute2 iptables nftables util-linux      # ip, iptables-restore, nft, nsenter
  iputils-ping netcat-openbsd tcpdump        # what a learner types inside sandboxes
  bridge-utils dnsutils procps tmux          # bridge/dig for labs; tmux for the TUI e2e test
  ipvsadm                                    # IPVS labs (inspect a service's table)
  qemu-system-x86 busybox-static kmod        # cnmlab vm: qemu, the initramfs, modprobe/depmod
  etcd-server etcd-client iperf3             # overlay control plane (etcd, etcdctl); lab 06/08 throughput
  docker.io                                  # real Docker: lab 10, conform/diff against Docker
)
if [ "$want_tests" = 1 ]; then
  APT_PACKAGES+=(mininet)                    # benchmarks (Mininet's build as a yardstick)
  APT_PACKAGES+=(vagrant debootstrap)        # vagrant/: `vagrant validate`; provisioning a clean Debian
fi
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
missing=()
for p in "${APT_PACKAGES[@]}"; do
  installed "$p" || missing+=("$p")
done

# Debian's docker.io and containerd start their daemons as soon as they are installed and
# enable them at boot. A system dockerd lives in this machine's own network namespace: it adds
# docker0 and sets the iptables FORWARD policy to DROP for the whole machine. cnmlab's
# conformance harness starts its own containerd and dockerd inside a lab namespace and never
# needs them. So when this script is the one installing them, it keeps them from starting
# (policy-rc.d: Debian's switch that maintainer scripts ask before starting a service, on
# systemd and sysvinit alike) and disables them at boot afterwards. A docker.io or containerd
# that was installed before is left exactly as it was. The same goes for etcd-server: the
# overlay labs run a private etcd inside each lab's namespaces, never the system one (which
# would listen on localhost:2379 in the machine's own namespace).
POLICY=/usr/sbin/policy-rc.d
held_units=()
hold_daemons() {
  if [ "$want_tests" = 1 ]; then
    installed containerd || held_units+=(containerd.service)
    installed docker.io || held_units+=(docker.service docker.socket)
  fi
  installed etcd-server || held_units+=(etcd.service)
  [ "${#held_units[@]}" -gt 0 ] || return 0
  [ -e "$POLICY" ] && mv "$POLICY" "$POLICY.cnmlab-saved"
  trap release_policy EXIT
  cat >"$POLICY" <<'POLICY_EOF'
#!/bin/sh
# Written by cnmlab's scripts/install.sh while it installs docker.io or etcd-server; removed
# when it ends. Deny starting Docker's and etcd's system daemons; ask the machine's own policy
# (if any) about the rest.
for arg in "$@"; do
  case "$arg" in
    -*) continue ;;
    docker|docker.service|docker.socket|containerd|containerd.service) exit 101 ;;
    etcd|etcd.service) exit 101 ;;
    *) break ;;
  esac
done
[ -x /usr/sbin/policy-rc.d.cnmlab-saved ] && exec /usr/sbin/policy-rc.d.cnmlab-saved "$@"
exit 0
POLICY_EOF
  chmod 755 "$POLICY"
}
release_policy() {
  if [ -e "$POLICY.cnmlab-saved" ]; then mv -f "$POLICY.cnmlab-saved" "$POLICY"; else rm -f "$POLICY"; fi
  trap - EXIT
}
disable_held_daemons() {
  [ "${#held_units[@]}" -gt 0 ] || return 0
  release_policy
  for unit in "${held_units[@]}"; do
    if [ -d /run/systemd/system ] && systemctl is-active --quiet "$unit"; then
      systemctl stop "$unit"  # started anyway (socket activation?): ours to stop, just installed
    fi
    if command -v systemctl >/dev/null; then
      systemctl disable --quiet "$unit" >/dev/null 2>&1 || true  # also its sysvinit links
    fi
  done
  if ! command -v systemctl >/dev/null; then
    for svc in docker etcd; do
      [ -x "/etc/init.d/$svc" ] && { update-rc.d "$svc" disable >/dev/null 2>&1 || true; }
    done
  fi
  local names=()
  case " ${held_units[*]} " in *" docker.service "*) names+=(docker.io) ;; esac
  case " ${held_units[*]} " in *" etcd.service "*) names+=(etcd-server) ;; esac
  echo "install.sh: installed ${names[*]} without starting or enabling its system daemons" \
       "(cnmlab starts its own inside a namespace)"
}

if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  hold_daemons
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  disable_held_daemons
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
# -qq: pip's own errors still print; its notes about the editable install's import finder do not
if [ "$want_tests" = 1 ]; then
  .venv/bin/pip install -qq -e '.[test]'
else
  .venv/bin/pip install -qq -e .
fi
ln -sf "$(pwd)/.venv/bin/cnmlab" /usr/local/bin/cnmlab
echo "cnmlab installed: $(command -v cnmlab)"
