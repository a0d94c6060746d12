#!/usr/bin/env bash
# Let the vagrant user run cnmlab as root: `vagrant ssh -c cnmlab` opens the workshop directly.
# Shared by vagrant/Vagrantfile and vagrant/multi/Vagrantfile; runs as root after install.sh.
set -euo pipefail
install -d /usr/local/lib/cnmlab-vagrant/bin
cat >/usr/local/lib/cnmlab-vagrant/bin/cnmlab <<'WRAP'
#!/bin/sh
# cnmlab builds namespaces and firewall rules: it runs as root (see /etc/sudoers.d/cnmlab).
exec sudo -H /usr/local/bin/cnmlab "$@"
WRAP
chmod 755 /usr/local/lib/cnmlab-vagrant/bin/cnmlab
echo 'case ":$PATH:" in *:/usr/local/lib/cnmlab-vagrant/bin:*) ;; *) PATH=/usr/local/lib/cnmlab-vagrant/bin:$PATH ;; esac' \
  >/etc/profile.d/cnmlab.sh
echo 'vagrant ALL=(root) NOPASSWD: /usr/local/bin/cnmlab' >/etc/sudoers.d/cnmlab
chmod 440 /etc/sudoers.d/cnmlab
visudo -cf /etc/sudoers.d/cnmlab >/dev/null
