#!/usr/bin/env bash
# Runs every mailfs test: unit, fuzz seeds, real FUSE mounts, crash tests and
# real Dovecot end to end. Installs what the tests need first (as root).
# Longer randomized runs: MAILFS_CRASH_ROUNDS=200 scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --test
export PATH="$PATH:/usr/local/go/bin"

leftover() { findmnt -rn -o TARGET,FSTYPE | awk '$2 ~ /^fuse/ && $1 ~ /^\/tmp\// {print $1}'; }
before=$(leftover || true)

unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
	echo "gofmt would change: $unformatted" >&2
	exit 1
fi
go vet ./...
# The demo an admin runs first (two nodes, pairing, Dovecot on each) must work.
scripts/demo.sh >/tmp/mailfs-demo.$$.log 2>&1 || { cat /tmp/mailfs-demo.$$.log >&2; echo "scripts/demo.sh failed" >&2; exit 1; }
echo "scripts/demo.sh: ok"
rm -f /tmp/mailfs-demo.$$.log
go test -race -count=1 -timeout 18m ./...
# A test process serves its own mounts: with one P, deadlocks between the
# FUSE server and its clients surface that two Ps would hide.
GOMAXPROCS=1 go test -count=1 -timeout 5m -run 'Journal|Posix|BadInput' ./fs/

after=$(leftover || true)
if [ "$after" != "$before" ]; then
	echo "tests leaked FUSE mounts:" >&2
	echo "$after" >&2
	exit 1
fi
