package index

import (
	"slices"
	"testing"

	"mailfs/journal"
)

// TestCreatesKept: which creates of a mailbox merged by rule 3 outlive a
// delete, by what the deleter had seen and which creates were one mailbox
// with the deleted one on the deleter.
func TestCreatesKept(t *testing.T) {
	nodeA, nodeB, nodeC, nodeD := journal.NodeID{1}, journal.NodeID{2}, journal.NodeID{3}, journal.NodeID{4}
	g := func(b byte) journal.GUID { return journal.GUID{b} }
	ref := func(guid byte, origin journal.NodeID, seq uint64, seen journal.VersionVector) CreateRef {
		return CreateRef{GUID: g(guid), Stamp: journal.Stamp{Origin: origin}, Seq: seq, Seen: seen}
	}
	mailbox := func(own CreateRef, merged ...CreateRef) Mailbox {
		return Mailbox{GUID: own.GUID, Created: own.Stamp, CreatedSeq: own.Seq, CreatedGUID: own.GUID,
			CreatedSeen: own.Seen, MergedCreates: merged}
	}
	for _, tc := range []struct {
		name    string
		mb      Mailbox
		deleted journal.GUID
		seen    journal.VersionVector
		want    []journal.GUID
	}{{
		name:    "a create the deleter had not seen stays",
		mb:      mailbox(ref(1, nodeA, 5, nil), ref(2, nodeB, 3, nil)),
		deleted: g(1), seen: journal.VersionVector{nodeA: 9},
		want: []journal.GUID{g(2)},
	}, {
		// A made 1, renamed it away, made 3 at its path, deleted 1; B's 2
		// (concurrent with both) joined all three here.
		name:    "a later create of the deleter's own is another mailbox",
		mb:      mailbox(ref(1, nodeA, 5, nil), ref(2, nodeB, 3, nil), ref(3, nodeA, 8, nil)),
		deleted: g(1), seen: journal.VersionVector{nodeA: 9},
		want: []journal.GUID{g(2), g(3)},
	}, {
		name: "a create another node had made after seeing the deleted one's is another mailbox",
		mb: mailbox(ref(1, nodeA, 5, nil), ref(2, nodeB, 3, nil),
			ref(3, nodeC, 4, journal.VersionVector{nodeA: 5})),
		deleted: g(1), seen: journal.VersionVector{nodeA: 9, nodeC: 4},
		want: []journal.GUID{g(2), g(3)},
	}, {
		name:    "a seen create concurrent with the deleted one was one mailbox with it",
		mb:      mailbox(ref(1, nodeA, 5, nil), ref(2, nodeB, 3, nil), ref(3, nodeC, 4, nil)),
		deleted: g(1), seen: journal.VersionVector{nodeA: 9, nodeC: 4},
		want: []journal.GUID{g(2)},
	}, {
		// 4 was concurrent with 1, and 3 saw 1 but not 4: on the deleter 4
		// joined 1, and 3 joined them.
		name: "one mailbox through another create the deleter had seen",
		mb: mailbox(ref(1, nodeA, 5, nil), ref(2, nodeB, 3, nil), ref(4, nodeC, 2, journal.VersionVector{}),
			ref(3, nodeD, 1, journal.VersionVector{nodeA: 5})),
		deleted: g(1), seen: journal.VersionVector{nodeA: 9, nodeC: 2, nodeD: 1},
		want: []journal.GUID{g(2)},
	}, {
		name:    "a delete naming no create here ends every create it had seen",
		mb:      mailbox(ref(1, nodeA, 5, nil), ref(2, nodeB, 3, nil), ref(3, nodeA, 8, nil)),
		deleted: g(9), seen: journal.VersionVector{nodeA: 9},
		want: []journal.GUID{g(2)},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			var got []journal.GUID
			for _, c := range tc.mb.CreatesKept(tc.deleted, tc.seen) {
				got = append(got, c.GUID)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("kept %v, want %v", got, tc.want)
			}
		})
	}
}
