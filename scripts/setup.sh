#!/usr/bin/env bash
# Installs mailfs on a fresh Debian machine: its dependencies, then the
# binary at /usr/local/bin/mailfs (PREFIX=... to change). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export PATH="$PATH:/usr/local/go/bin"
prefix="${PREFIX:-/usr/local}"
go build -trimpath -o "$prefix/bin/mailfs" ./cmd/mailfs
echo "installed $prefix/bin/mailfs"
