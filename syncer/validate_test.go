package syncer

import (
	"strings"
	"testing"

	"mailfs/journal"
)

// A move names at most two ops it was made after (the expunge it was made
// over and the op that had brought the message to its source); a peer's
// move naming more is refused.
func TestValidateMoveSeen(t *testing.T) {
	move := func(seen journal.VersionVector) *journal.Op {
		return &journal.Op{Kind: journal.MessageMove, Origin: journal.NodeID{9}, Seq: 4, Mailbox: journal.GUID{1},
			Target: journal.GUID{2}, Path: "u/Maildir", NewPath: "u/Maildir/.Archive", Key: "1.M1P1.h",
			Sub: journal.SubCur, Seen: seen}
	}
	a, b, c := journal.NodeID{1}, journal.NodeID{2}, journal.NodeID{3}
	for _, seen := range []journal.VersionVector{nil, {a: 3}, {a: 3, b: 7}} {
		if err := validateOp(move(seen), journal.DefaultLimits()); err != nil {
			t.Errorf("move with Seen %v refused: %v", seen, err)
		}
	}
	err := validateOp(move(journal.VersionVector{a: 3, b: 7, c: 1}), journal.DefaultLimits())
	if err == nil || !strings.Contains(err.Error(), "more than 2") {
		t.Fatalf("move naming three ops: %v; want it refused", err)
	}
}
