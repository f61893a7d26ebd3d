#!/usr/bin/env bash
# Installs what mailfs needs on a Debian machine (run as root).
#   scripts/install-deps.sh          fuse3 (to mount) and a Go toolchain (to build)
#   scripts/install-deps.sh --test   also Dovecot (imapd, lmtpd, core for doveadm), iproute2 and
#                                    util-linux (ip netns, nsenter) for the end-to-end tests, and
#                                    systemd (systemd-analyze checks the shipped unit)
set -euo pipefail

want=(fuse3)
[ "${1:-}" = "--test" ] && want+=(dovecot-imapd dovecot-lmtpd dovecot-core iproute2 util-linux systemd)
command -v go >/dev/null 2>&1 || [ -x /usr/local/go/bin/go ] || want+=(golang-go)

missing=()
for p in "${want[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "install-deps: need root to install: ${missing[*]}" >&2
		exit 1
	fi
	echo "install-deps: installing ${missing[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# policy-rc.d keeps the packaged dovecot service from starting: tests run their own.
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod +x /usr/sbin/policy-rc.d
		trap 'rm -f /usr/sbin/policy-rc.d' EXIT
	fi
	apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Non-root mounts with allow_other need this; root mounts do not.
if [ -w /etc/fuse.conf ] && ! grep -q '^user_allow_other' /etc/fuse.conf; then
	echo user_allow_other >>/etc/fuse.conf
fi
# FUSE needs its device; load the module if it is not there yet.
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true
if [ ! -e /dev/fuse ]; then
	echo "install-deps: /dev/fuse is missing and 'modprobe fuse' did not create it; mailfs cannot mount here" >&2
	exit 1
fi
