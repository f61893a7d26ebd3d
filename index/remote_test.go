package index

import (
	"context"
	"testing"

	"mailfs/journal"
)

// A local op made while a peer's segment is being applied has seen the
// peer ops whose effects are committed already, though the segment's
// cursor is not durable yet: a mailbox deleted now takes their mail (and
// the other nodes must decide so too). The cursor itself stays where it is.
func TestVersionVectorCountsOpsBeingApplied(t *testing.T) {
	t.Parallel()
	s := openTest(t, t.TempDir())
	defer s.Close()
	ctx := context.Background()
	peer := randomNode(t)
	if _, err := s.Commit(ctx, AppliedOp(peer, 7, 10)); err != nil {
		t.Fatal(err)
	}
	create := &journal.Op{Kind: journal.MailboxCreate, Origin: peer, Seq: 12, Time: journal.HLC{WallMs: 1},
		Mailbox: journal.GUID{1}, Path: "u/Maildir"}
	if _, err := s.Commit(ctx, Event{Kind: EvApplying, Remote: create}); err != nil {
		t.Fatal(err)
	}
	ops, err := s.Commit(ctx, Event{Kind: EvMkdir, Path: "v/Maildir/cur", IsDir: true})
	if err != nil || len(ops) != 1 || ops[0].Kind != journal.MailboxCreate {
		t.Fatalf("local mkdir: %v, %v", ops, err)
	}
	if got := ops[0].Seen[peer]; got != 12 {
		t.Fatalf("local op's version vector has %d of the peer, want 12 (the op being applied)", got)
	}
	if epoch, seq, err := s.Applied(peer); err != nil || epoch != 7 || seq != 10 {
		t.Fatalf("cursor %d/%d (%v), want 7/10: it moves only when the segment is applied", epoch, seq, err)
	}
	if _, err := s.Commit(ctx, AppliedOp(peer, 7, 13)); err != nil {
		t.Fatal(err)
	}
	ops, err = s.Commit(ctx, Event{Kind: EvMkdir, Path: "w/Maildir/cur", IsDir: true})
	if err != nil || len(ops) != 1 || ops[0].Seen[peer] != 13 {
		t.Fatalf("local mkdir after the segment: %v, %v; want the peer seen up to 13", ops, err)
	}
}

// Only a visible effect of a peer op counts as seen: its body written into
// tmp/ does not (a mailbox deleted then does not hold the message), its
// rename into new/ does.
func TestVersionVectorIgnoresScratchEffects(t *testing.T) {
	t.Parallel()
	s := openTest(t, t.TempDir())
	defer s.Close()
	ctx := context.Background()
	peer := randomNode(t)
	if _, err := s.Commit(ctx, AppliedOp(peer, 1, 3), Event{Kind: EvMkdir, Path: "u/Maildir/cur", IsDir: true}); err != nil {
		t.Fatal(err)
	}
	add := &journal.Op{Kind: journal.MessageAdd, Origin: peer, Seq: 4, Time: journal.HLC{WallMs: 2}, Key: "1.M1.p"}
	seenAfter := func(ev Event) uint64 {
		t.Helper()
		if _, err := s.Commit(ctx, ev); err != nil {
			t.Fatal(err)
		}
		ops, err := s.Commit(ctx, Event{Kind: EvMkdir, Path: "probe" + ev.Kind.String() + "/cur", IsDir: true})
		if err != nil || len(ops) != 1 {
			t.Fatalf("probe op: %v, %v", ops, err)
		}
		return ops[0].Seen[peer]
	}
	if got := seenAfter(Event{Kind: EvWrite, Path: "u/Maildir/tmp/1.M1.p", File: FileInfo{Size: 3}, Remote: add}); got != 3 {
		t.Fatalf("after the body's write into tmp/: peer seen up to %d, want 3", got)
	}
	if got := seenAfter(Event{Kind: EvRename, Path: "u/Maildir/tmp/1.M1.p", NewPath: "u/Maildir/new/1.M1.p",
		File: FileInfo{Size: 3, Content: journal.ContentID{1}}, Remote: add}); got != 4 {
		t.Fatalf("after the rename into new/: peer seen up to %d, want 4", got)
	}
}

// A mailbox made here before its create arrived (a peer's rename came
// first) learns its create when it does: where and by whom it was made and
// what its creator had seen, which decide same-path merges (rule 3). A
// mailbox that knows its create keeps it.
func TestLateCreateIsRecorded(t *testing.T) {
	t.Parallel()
	s := openTest(t, t.TempDir())
	defer s.Close()
	ctx := context.Background()
	peer, other := randomNode(t), randomNode(t)
	g := journal.GUID{7}
	early := &journal.Op{Kind: journal.MailboxCreate, Origin: other, Seq: 0, Time: journal.HLC{WallMs: 5}, Mailbox: g,
		Path: "u/Maildir/.R"}
	if _, err := s.Commit(ctx, Event{Kind: EvMkdir, Path: "u/Maildir/.R/cur", IsDir: true, Remote: early}); err != nil {
		t.Fatal(err)
	}
	create := &journal.Op{Kind: journal.MailboxCreate, Origin: peer, Seq: 9, Time: journal.HLC{WallMs: 3}, Mailbox: g,
		Path: "u/Maildir/.S", Seen: journal.VersionVector{other: 4}}
	if _, err := s.Commit(ctx, Event{Kind: EvRemoteMeta, Remote: create}); err != nil {
		t.Fatal(err)
	}
	var mb Mailbox
	view := func() {
		t.Helper()
		err := s.View(func(v PeerView) error {
			var ok bool
			var err error
			mb, ok, err = v.Mailbox(g)
			if err == nil && !ok {
				t.Fatal("mailbox gone")
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	view()
	if mb.CreatedSeq != 9 || mb.Created.Origin != peer || mb.CreatedPath != "u/Maildir/.S" || mb.CreatedSeen[other] != 4 ||
		mb.Path != "u/Maildir/.R" || mb.CreatedGUID != g {
		t.Fatalf("after its create arrived: %+v; want created by the peer (seq 9) at u/Maildir/.S, still at u/Maildir/.R", mb)
	}
	if mb.Renamed != mb.Created {
		// Its making here was no rename: a rename older than the op that
		// made it here must still win over the create's path.
		t.Fatalf("path stamp %+v after the create arrived; want the create's %+v", mb.Renamed, mb.Created)
	}
	again := *create
	again.Seq, again.Path = 11, "u/Maildir/.T"
	if _, err := s.Commit(ctx, Event{Kind: EvRemoteMeta, Remote: &again}); err != nil {
		t.Fatal(err)
	}
	view()
	if mb.CreatedSeq != 9 || mb.CreatedPath != "u/Maildir/.S" {
		t.Fatalf("a second create rewrote the record: %+v", mb)
	}
}

// A peer's create merged into a mailbox made here (rule 3) is recorded on
// it, and the merge itself counts as seen: a local delete from then on
// takes that create too. A delete from a node that had not seen it leaves
// the mailbox to that create, under its GUID, as on that node.
func TestMergedCreateSurvivesDeleteThatMissedIt(t *testing.T) {
	t.Parallel()
	s := openTest(t, t.TempDir())
	defer s.Close()
	ctx := context.Background()
	peer, deleter := randomNode(t), randomNode(t)
	ops, err := s.Commit(ctx, Event{Kind: EvMkdir, Path: "u/Maildir/.W/cur", IsDir: true})
	if err != nil || len(ops) != 1 {
		t.Fatalf("local create: %v, %v", ops, err)
	}
	local := ops[0].Mailbox
	theirs := journal.GUID{0xff}
	create := &journal.Op{Kind: journal.MailboxCreate, Origin: peer, Seq: 5, Time: journal.HLC{WallMs: 9}, Mailbox: theirs,
		Path: "u/Maildir/.W", Seen: journal.VersionVector{}}
	if _, err := s.Commit(ctx, Event{Kind: EvRekey, GUID: local, NewGUID: theirs, Remote: create}); err != nil {
		t.Fatal(err)
	}
	ops, err = s.Commit(ctx, Event{Kind: EvMkdir, Path: "probe/cur", IsDir: true})
	if err != nil || len(ops) != 1 || ops[0].Seen[peer] != 5 {
		t.Fatalf("local op after the merge: %v, %v; want the peer's create seen", ops, err)
	}
	if _, err := s.Commit(ctx, Event{Kind: EvRemoteMeta, Remote: create}); err != nil {
		t.Fatal(err)
	}
	mailbox := func(g journal.GUID) (mb Mailbox, ok bool) {
		t.Helper()
		if err := s.View(func(v PeerView) error { mb, ok, err = v.Mailbox(g); return err }); err != nil {
			t.Fatal(err)
		}
		return mb, ok
	}
	mb, ok := mailbox(theirs)
	if !ok || mb.GUID != theirs || mb.CreatedGUID != local || len(mb.MergedCreates) != 1 || mb.MergedCreates[0].GUID != theirs {
		t.Fatalf("after the merge: %+v (%v); want the peer's GUID, created here, the peer's create merged", mb, ok)
	}
	// A delete by a node that had seen this node's create but not the
	// peer's.
	seen := journal.VersionVector{s.node: mb.CreatedSeq, deleter: 3}
	unseen := mb.CreatesUnseen(seen)
	if len(unseen) != 1 || Survivor(unseen) != theirs {
		t.Fatalf("creates unseen by the delete: %+v; want the peer's", unseen)
	}
	if _, err := s.Commit(ctx, Event{Kind: EvDropSeenCreates, GUID: theirs, NewGUID: theirs, Seen: seen}); err != nil {
		t.Fatal(err)
	}
	mb, ok = mailbox(theirs)
	if !ok || mb.Created.Origin != peer || mb.CreatedSeq != 5 || mb.CreatedGUID != theirs || len(mb.MergedCreates) != 0 ||
		mb.Path != "u/Maildir/.W" {
		t.Fatalf("after the delete: %+v (%v); want the peer's create alone", mb, ok)
	}
	if len(mb.CreatesUnseen(seen)) != 1 {
		t.Fatal("the kept create is no longer unseen by the delete")
	}
	if _, err := s.Commit(ctx, Event{Kind: EvDropSeenCreates, GUID: theirs, NewGUID: theirs, Seen: journal.VersionVector{peer: 5}}); err == nil {
		t.Fatal("a delete that had seen every create ended none of them without an error")
	}
}

// Adds that came without their bodies count as mail a mailbox delete may
// not have seen until a delete of the mailbox that had seen them takes
// them; what it took is marked as taken by a mailbox delete, and an add it
// had not seen still counts.
func TestAbsentAddsTakenByMailboxDelete(t *testing.T) {
	t.Parallel()
	s := openTest(t, t.TempDir())
	defer s.Close()
	ctx := context.Background()
	peer, deleter, late := randomNode(t), randomNode(t), randomNode(t)
	if _, err := s.Commit(ctx, Event{Kind: EvMkdir, Path: "u/Maildir/.A/cur", IsDir: true}); err != nil {
		t.Fatal(err)
	}
	var g journal.GUID
	if err := s.View(func(v PeerView) error {
		mb, ok, err := v.MailboxAt("u/Maildir/.A")
		if err == nil && !ok {
			t.Fatal("mailbox not made")
		}
		g = mb.GUID
		return err
	}); err != nil {
		t.Fatal(err)
	}
	add := func(origin journal.NodeID, seq uint64, key string) {
		t.Helper()
		op := &journal.Op{Kind: journal.MessageAdd, Origin: origin, Seq: seq, Time: journal.HLC{WallMs: int64(seq)},
			Mailbox: g, Path: "u/Maildir/.A", Key: key}
		if _, err := s.Commit(ctx, Event{Kind: EvAbsentAdd, GUID: g, Path: key, Remote: op}); err != nil {
			t.Fatal(err)
		}
	}
	add(peer, 3, "1.M1P1.peer")
	add(late, 7, "2.M1P1.late")
	del := &journal.Op{Kind: journal.MailboxDelete, Origin: deleter, Seq: 4, Time: journal.HLC{WallMs: 20}, Mailbox: g,
		Path: "u/Maildir/.A", Seen: journal.VersionVector{peer: 3, late: 6}}
	seenBy := func() bool {
		t.Helper()
		var seen bool
		if err := s.View(func(v PeerView) error {
			var err error
			seen, err = v.AbsentAddSeen(g, del.Seen)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return seen
	}
	if !seenBy() {
		t.Fatal("AbsentAddSeen before the delete took them: false; want true (the peer's add)")
	}
	if _, err := s.Commit(ctx, Event{Kind: EvAbsentAddsTaken, GUID: g, Remote: del}); err != nil {
		t.Fatal(err)
	}
	if seenBy() {
		t.Fatal("AbsentAddSeen after the delete took them: true; want false")
	}
	other := journal.VersionVector{} // a second delete that had seen neither add
	err := s.View(func(v PeerView) error {
		got := map[string]bool{}
		if err := v.ExpungedUnseenNamed(g, other, func(to journal.GUID, byMailboxDelete bool) {
			got[to.String()] = byMailboxDelete
		}); err != nil {
			return err
		}
		if len(got) != 1 || !got[g.String()] {
			t.Errorf("expunged unseen after the delete: %v; want only the taken add, marked as taken by a mailbox delete", got)
		}
		if unseen, err := v.ExpungedUnseen(g, other); err != nil || !unseen {
			t.Errorf("ExpungedUnseen = %v, %v; want true: the add the delete had not seen still counts", unseen, err)
		}
		if absent, err := v.AbsentAddUnseen(g, journal.VersionVector{late: 7}); err != nil || absent {
			t.Errorf("AbsentAddUnseen(seen both) = %v, %v; want false", absent, err)
		}
		if absent, err := v.AbsentAddUnseen(g, journal.VersionVector{late: 6}); err != nil || !absent {
			t.Errorf("AbsentAddUnseen(not seen the late add) = %v, %v; want true: the delete had not taken it", absent, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Commit(ctx, Event{Kind: EvAbsentAddsTaken, GUID: g, Remote: &journal.Op{Kind: journal.MessageExpunge}}); err == nil {
		t.Fatal("absent adds taken by an op that is no mailbox delete: want an error")
	}
}
