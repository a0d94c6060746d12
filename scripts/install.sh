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
)
if [ "$want_tests" = 1 ]; then
  APT_PACKAGES+=(docker.io busybox-static mininet)  # conformance against real Docker; benchmarks
fi
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
if [ "$want_tests" = 1 ]; then
  .venv/bin/pip install -q -e '.[test]'
else
  .venv/bin/pip install -q -e .
fi
ln -sf "$(pwd)/.venv/bin/cnmlab" /usr/local/bin/cnmlab
echo "cnmlab installed: $(command -v cnmlab)"
