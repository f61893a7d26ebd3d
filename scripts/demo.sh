#!/usr/bin/env bash
# mailfs in five minutes, on one Debian machine, as root: builds mailfs,
# starts two nodes (mx1, mx2) on loopback, pairs them, starts a Dovecot on
# each mount, delivers a message into mx1 by LMTP and fetches it from mx2 by
# IMAP, prints `mailfs status` of both, and cleans everything up.
#   sudo scripts/demo.sh            (KEEP=1 leaves the demo running until Enter)
# Exit 0 when the message arrived on mx2 byte for byte, 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo: run as root (Dovecot switches users; mailfs mounts)" >&2; exit 1; }
scripts/install-deps.sh --test >&2
export PATH="$PATH:/usr/local/go/bin"

work=$(mktemp -d /tmp/mailfs-demo.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
	set +e
	for n in mx1 mx2; do
		[ -f "$work/$n/dovecot.conf" ] && doveadm -c "$work/$n/dovecot.conf" stop >/dev/null 2>&1
	done
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
	for p in "${pids[@]}"; do
		for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$p" 2>/dev/null
	done
	for n in mx1 mx2; do
		mountpoint -q "$work/$n/mnt" 2>/dev/null && umount -l "$work/$n/mnt"
	done
	rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n=== %s\n' "$*"; }

# free_port prints a loopback TCP port nothing listens on.
free_port() {
	local p
	while :; do
		p=$((20000 + RANDOM % 40000))
		(exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
	done
}

step "building mailfs"
go build -o "$work/mailfs" ./cmd/mailfs
mailfs="$work/mailfs"

mail_uid=$(id -u nobody)
mail_gid=$(getent group nogroup | cut -d: -f3 || id -g nobody)

step "starting two nodes: mx1 and mx2"
for n in mx1 mx2; do
	mkdir -p "$work/$n/mnt" "$work/$n/index" "$work/$n/home" "$work/$n/state"
	chown "$mail_uid:$mail_gid" "$work/$n/index" "$work/$n/home"
	port=$(free_port)
	echo "127.0.0.1:$port" >"$work/$n/listen"
	"$mailfs" init --store "$work/$n/store" --name "$n" --listen "127.0.0.1:$port" >/dev/null 2>"$work/$n/init.log"
	# The mail processes run as nobody: the tree is theirs.
	chown "$mail_uid:$mail_gid" "$work/$n/store/maildir"
	"$mailfs" mount --store "$work/$n/store" "$work/$n/mnt" >"$work/$n/mailfs.log" 2>&1 &
	pids+=($!)
done
for n in mx1 mx2; do
	for _ in $(seq 300); do grep -q "mailfs ready" "$work/$n/mailfs.log" && break; sleep 0.1; done
	grep -q "mailfs ready" "$work/$n/mailfs.log" || { cat "$work/$n/mailfs.log" >&2; exit 1; }
	echo "$n mounted at $work/$n/mnt, peers dial it at $(cat "$work/$n/listen")"
done

step "pairing: 'mailfs pair invite' on mx1, 'mailfs pair join CODE' on mx2"
code=$("$mailfs" pair invite --store "$work/mx1/store" 2>/dev/null)
"$mailfs" pair join --store "$work/mx2/store" "$code"

step "starting Dovecot on each mount (IMAP and LMTP on loopback)"
for n in mx1 mx2; do
	imap=$(free_port)
	lmtp=$(free_port)
	echo "$imap" >"$work/$n/imap"
	echo "$lmtp" >"$work/$n/lmtp"
	cat >"$work/$n/dovecot.conf" <<EOF
base_dir = $work/$n/run
state_dir = $work/$n/state
instance_name = mailfs-demo-$n
log_path = $work/$n/dovecot.log
protocols = imap lmtp
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = $mail_uid
first_valid_gid = $mail_gid
# The mail on the mount, Dovecot's indexes off it (they are per node).
mail_location = maildir:$work/$n/mnt/%d/%n/Maildir:INDEX=$work/$n/index/%d/%n
mail_uid = $mail_uid
mail_gid = $mail_gid
mmap_disable = yes
mail_fsync = always
maildir_copy_with_hardlinks = yes
namespace inbox {
  inbox = yes
}
passdb {
  driver = static
  args = password=demo
}
userdb {
  driver = static
  args = uid=$mail_uid gid=$mail_gid home=$work/$n/home/%d/%n allow_all_users=yes
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $imap
  }
  inet_listener imaps {
    port = 0
  }
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = $lmtp
  }
}
EOF
	dovecot -c "$work/$n/dovecot.conf"
done
for n in mx1 mx2; do
	for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$(cat "$work/$n/imap")") 2>/dev/null && break; sleep 0.1; done
	echo "$n: Dovecot IMAP on 127.0.0.1:$(cat "$work/$n/imap"), LMTP on 127.0.0.1:$(cat "$work/$n/lmtp")"
done

# talk HOST PORT: a line-based client on fd 3; expect waits for a line
# starting with its argument (a final status line), failing on a timeout.
expect() {
	local line
	while IFS= read -r -t 15 line <&3; do
		line=${line%$'\r'}
		printf '  S: %s\n' "$line" >>"$work/dialogue"
		case "$line" in "$1"*) return 0 ;; [0-9][0-9][0-9]\ *) [ "${1:0:1}" = "${line:0:1}" ] || { echo "unexpected: $line" >&2; return 1; } ;; esac
	done
	echo "timed out waiting for '$1'" >&2
	return 1
}
say() { printf '  C: %s\n' "$1" >>"$work/dialogue"; printf '%s\r\n' "$1" >&3; }

step "delivering a message to alice@example.com on mx1 by LMTP"
subject="mailfs demo $(date -u +%FT%TZ) $RANDOM"
exec 3<>"/dev/tcp/127.0.0.1/$(cat "$work/mx1/lmtp")"
expect "220 "
say "LHLO demo.example"
expect "250 "
say "MAIL FROM:<admin@example.com>"
expect "250 "
say "RCPT TO:<alice@example.com>"
expect "250 "
say "DATA"
expect "354 "
say "From: admin@example.com"
say "To: alice@example.com"
say "Subject: $subject"
say ""
say "Delivered on mx1, read on mx2."
say "."
expect "250 "
say "QUIT"
exec 3<&-
echo "delivered: \"$subject\""
ls -l "$work/mx1/mnt/example.com/alice/Maildir/new/"

step "waiting until mx2 has everything mx1 journaled ('mailfs sync')"
"$mailfs" sync --store "$work/mx1/store" --timeout 60s

step "fetching it from mx2 by IMAP"
: >"$work/dialogue"
exec 3<>"/dev/tcp/127.0.0.1/$(cat "$work/mx2/imap")"
expect "* OK"
say "a LOGIN alice@example.com demo"
expect "a OK"
say "b SELECT INBOX"
expect "b OK"
say "c FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)])"
expect "c "
say "d LOGOUT"
exec 3<&-
if grep -qF "  S: Subject: $subject" "$work/dialogue"; then
	echo "mx2 has it: $(grep -m1 -F "  S: Subject: $subject" "$work/dialogue" | sed 's/^  S: //')"
	ok=0
else
	echo "mx2 does not show the message; IMAP dialogue:" >&2
	cat "$work/dialogue" >&2
	ok=1
fi

step "mailfs status on mx1"
"$mailfs" status --store "$work/mx1/store"
step "mailfs status on mx2"
"$mailfs" status --store "$work/mx2/store"
step "mailfs status --check on mx1"
"$mailfs" status --store "$work/mx1/store" --check || ok=1

if [ "${KEEP:-}" = 1 ]; then
	step "the demo keeps running in $work; press Enter to clean up"
	read -r _
fi
step "cleaning up"
exit $ok
