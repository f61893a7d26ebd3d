package main

import (
	"fmt"
	"path"
	"strings"
	"time"

	"mailfs/index"
	"mailfs/journal"
)

// peerLag is what one peer still lacks of this node's journal.
type peerLag struct {
	Ops   uint64
	Bytes int64 // bytes of the messages and files the pending ops add
	// Oldest is the time of the oldest op the peer has not acknowledged
	// (zero when it has everything).
	Oldest time.Time
}

// pendingOps walks this node's journal once, from just after the lowest seq
// any peer acknowledged, and accounts what each peer still lacks; with
// byUser it also counts, per user (userOf the op's path) and peer, the ops
// that peer lacks. Its cost grows with the lag, not with the journal.
func pendingOps(ix *index.Store, acked []uint64, byUser bool) ([]peerLag, map[string][]uint64, error) {
	lags := make([]peerLag, len(acked))
	if len(acked) == 0 {
		return lags, nil, nil
	}
	from := acked[0]
	for _, a := range acked {
		from = min(from, a)
	}
	if from >= ix.Seq() {
		return lags, nil, nil
	}
	var users map[string][]uint64
	if byUser {
		users = map[string][]uint64{}
	}
	err := ix.Ops(from+1, func(op *journal.Op) error {
		var counts []uint64
		if byUser {
			u := userOfOp(op)
			if counts = users[u]; counts == nil {
				counts = make([]uint64, len(acked))
				users[u] = counts
			}
		}
		for i, a := range acked {
			if op.Seq <= a {
				continue
			}
			l := &lags[i]
			if l.Ops == 0 {
				l.Oldest = time.UnixMilli(op.Time.WallMs)
			}
			l.Ops++
			if op.Kind == journal.MessageAdd || op.Kind == journal.FileWrite {
				l.Bytes += op.Size
			}
			if counts != nil {
				counts[i]++
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("read the journal after seq %d: %w", from, err)
	}
	return lags, users, nil
}

// userOfOp is the user an op belongs to (see userOf).
func userOfOp(op *journal.Op) string {
	switch op.Kind {
	case journal.FileWrite, journal.FileDelete, journal.DirCreate, journal.DirDelete:
		return userOf(path.Dir(op.Path))
	}
	return userOf(op.Path)
}

// userOf names the user a directory of the tree belongs to: the directory
// that holds a "Maildir" (example.com/alice for
// example.com/alice/Maildir/.Sent), else the Maildir itself with its
// Maildir++ folders (".Sent") stripped (alice for alice/.Sent).
func userOf(dir string) string {
	if dir == "." || dir == "" {
		return "."
	}
	parts := strings.Split(dir, "/")
	for i, p := range parts {
		if p == "Maildir" && i > 0 {
			return strings.Join(parts[:i], "/")
		}
	}
	for len(parts) > 1 && strings.HasPrefix(parts[len(parts)-1], ".") {
		parts = parts[:len(parts)-1]
	}
	return strings.Join(parts, "/")
}

// matchUser reports whether user matches pattern, as doveadm's user masks
// do: '*' matches any run of characters (slashes too), '?' any one.
func matchUser(pattern, user string) bool {
	for len(pattern) > 0 {
		switch pattern[0] {
		case '*':
			for len(pattern) > 0 && pattern[0] == '*' {
				pattern = pattern[1:]
			}
			if pattern == "" {
				return true
			}
			for i := 0; i <= len(user); i++ {
				if matchUser(pattern, user[i:]) {
					return true
				}
			}
			return false
		case '?':
			if user == "" {
				return false
			}
			pattern, user = pattern[1:], user[1:]
		default:
			if user == "" || user[0] != pattern[0] {
				return false
			}
			pattern, user = pattern[1:], user[1:]
		}
	}
	return user == ""
}
