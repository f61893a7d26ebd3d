package index

import (
	"context"
	"testing"

	"mailfs/journal"
)

// Two mailboxes that both hold mail merge as the applier moves the mail
// of one into the other through the mount: each record moves with its
// file (stamps and all), the removal of the emptied cur/ retires the
// merged-away mailbox without a tombstone, its GUID becomes a name of the
// kept one, its expunge traces and creates go along, the higher GUID is
// kept, and the counts stay right. Nothing is journaled.
func TestMergeOfTwoMailboxesHoldingMail(t *testing.T) {
	t.Parallel()
	s := openTest(t, t.TempDir())
	defer s.Close()
	ctx := context.Background()
	peer := randomNode(t)
	commit := func(evs ...Event) []journal.Op {
		t.Helper()
		ops, err := s.Commit(ctx, evs...)
		if err != nil {
			t.Fatal(err)
		}
		return ops
	}
	keep, gone := journal.GUID{0x10}, journal.GUID{0x20}
	mk := func(g journal.GUID, path string, seq uint64) *journal.Op {
		op := &journal.Op{Kind: journal.MailboxCreate, Origin: peer, Seq: seq, Time: journal.HLC{WallMs: int64(seq)}, Mailbox: g,
			Path: path, Seen: journal.VersionVector{}}
		commit(Event{Kind: EvMkdir, Path: path + "/cur", IsDir: true, Remote: op})
		return op
	}
	mk(keep, "u/Maildir/.F2", 1)
	create := mk(gone, "u/Maildir/.F", 2)
	add := func(mb, key string, seq uint64) {
		op := &journal.Op{Kind: journal.MessageAdd, Origin: peer, Seq: seq, Time: journal.HLC{WallMs: int64(seq)}, Key: key}
		commit(Event{Kind: EvRename, Path: mb + "/tmp/" + key, NewPath: mb + "/cur/" + key + ":2,S",
			File: FileInfo{Size: 3, Content: journal.ContentID{byte(seq)}}, Remote: op})
	}
	add("u/Maildir/.F2", "1.M1.a", 3)
	add("u/Maildir/.F", "1.M2.b", 4)
	expunge := &journal.Op{Kind: journal.MessageExpunge, Origin: peer, Seq: 5, Time: journal.HLC{WallMs: 5}, Mailbox: gone,
		Key: "1.M3.c"}
	commit(Event{Kind: EvRemoteMeta, Remote: expunge})
	mailboxes0, messages0 := s.Counts()

	late := &journal.Op{Kind: journal.MailboxCreate, Origin: randomNode(t), Seq: 9, Time: journal.HLC{WallMs: 9},
		Mailbox: journal.GUID{0x30}, Path: "u/Maildir/.F"}
	if ops := commit(Event{Kind: EvMerging, GUID: gone, NewGUID: keep, Remote: late},
		Event{Kind: EvRename, Path: "u/Maildir/.F/cur/1.M2.b:2,S", NewPath: "u/Maildir/.F2/cur/1.M2.b:2,S", Remote: late},
		Event{Kind: EvRmdir, Path: "u/Maildir/.F/cur", IsDir: true, Remote: late}); len(ops) != 0 {
		t.Fatalf("the merge journaled %v", ops)
	}
	if m, n := s.Counts(); m != mailboxes0-1 || n != messages0 {
		t.Fatalf("counts after the merge: %d mailboxes, %d messages; want %d, %d", m, n, mailboxes0-1, messages0)
	}
	err := s.View(func(v PeerView) error {
		for _, g := range []journal.GUID{keep, gone} {
			mb, ok, err := v.Mailbox(g)
			if err != nil {
				return err
			}
			if !ok || mb.GUID != gone || mb.Path != "u/Maildir/.F2" || mb.Messages != 2 {
				t.Errorf("mailbox %s after the merge: %+v (%v); want %s (the higher GUID) at .F2 with 2 messages", g, mb, ok, gone)
			}
			if len(mb.MergedCreates) != 1 || mb.MergedCreates[0].Seq != create.Seq {
				t.Errorf("merged creates %+v; want the merged-away mailbox's create", mb.MergedCreates)
			}
		}
		m, ok, err := v.Message(gone, "1.M2.b")
		if err != nil || !ok || m.AddedSeq != 4 || m.Added.Origin != peer {
			t.Errorf("moved message: %+v (%v, %v); want it with the stamp of its add", m, ok, err)
		}
		if dead, err := v.MessageExpunged(keep, "1.M3.c"); err != nil || !dead {
			t.Errorf("the merged-away mailbox's expunge trace did not go along (%v)", err)
		}
		if _, dead, err := v.MailboxTombstone(gone); err != nil || dead {
			t.Errorf("the merge left a mailbox tombstone (%v)", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
