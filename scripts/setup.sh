#!/usr/bin/env bash
# Installs mailfs on a fresh Debian machine: its dependencies, then the
# binary at /usr/local/bin/mailfs (PREFIX=... to change), the systemd unit
# (installed, not enabled) and its mount-clearing helper. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export PATH="$PATH:/usr/local/go/bin"
prefix="${PREFIX:-/usr/local}"
go build -trimpath -o "$prefix/bin/mailfs" ./cmd/mailfs
echo "installed $prefix/bin/mailfs"
install -D -m 0755 scripts/mailfs-clear-mount "$prefix/lib/mailfs/mailfs-clear-mount"
if [ -d /etc/systemd/system ]; then
	sed -e "s|/usr/local/bin/mailfs|$prefix/bin/mailfs|" -e "s|/usr/local/lib/mailfs/|$prefix/lib/mailfs/|g" \
		scripts/mailfs.service >/etc/systemd/system/mailfs.service
	echo "installed /etc/systemd/system/mailfs.service (settings: /etc/default/mailfs; enable: systemctl enable --now mailfs)"
	echo "for Dovecot: install -D -m 0644 scripts/dovecot-mailfs.conf /etc/systemd/system/dovecot.service.d/mailfs.conf"
fi
