package index

import (
	"context"
	"crypto/rand"
	"fmt"
	"sync"
	"testing"

	"mailfs/journal"
)

func openTest(t *testing.T, dir string) *Store {
	t.Helper()
	var node journal.NodeID
	rand.Read(node[:])
	s, err := Open(dir, Options{Node: node, Name: "t"})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func deliverEvent(mb string, i int) Event {
	return Event{Kind: EvRename, Path: fmt.Sprintf("%s/tmp/%d.M1P1.h", mb, i), NewPath: fmt.Sprintf("%s/new/%d.M1P1.h", mb, i),
		File: FileInfo{Size: 10, Mtime: int64(i), Content: journal.ContentID{byte(i), byte(i >> 8)}}}
}

// Concurrent commits share transactions (group commit), yet every op gets
// a dense seq, and the counts and the journal agree.
func TestGroupCommitConcurrent(t *testing.T) {
	t.Parallel()
	s := openTest(t, t.TempDir())
	defer s.Close()
	ctx := context.Background()
	const mailboxes, per = 8, 50
	for m := 0; m < mailboxes; m++ {
		if _, err := s.Commit(ctx, Event{Kind: EvMkdir, Path: fmt.Sprintf("u%d/cur", m), IsDir: true}); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for m := 0; m < mailboxes; m++ {
		wg.Go(func() {
			for i := 0; i < per; i++ {
				ops, err := s.Commit(ctx, deliverEvent(fmt.Sprintf("u%d", m), i))
				if err != nil || len(ops) != 1 || ops[0].Kind != journal.MessageAdd {
					t.Errorf("commit: %v %v", ops, err)
					return
				}
			}
		})
	}
	wg.Wait()
	var seqs []uint64
	if err := s.Ops(1, func(op *journal.Op) error {
		seqs = append(seqs, op.Seq)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(seqs) != mailboxes*(per+1) || s.Seq() != uint64(len(seqs)) {
		t.Fatalf("%d ops journaled, seq %d; want %d", len(seqs), s.Seq(), mailboxes*(per+1))
	}
	for i, q := range seqs {
		if q != uint64(i+1) {
			t.Fatalf("journal seq %d at position %d: gap", q, i)
		}
	}
	if mb, msgs := s.Counts(); mb != mailboxes || msgs != mailboxes*per {
		t.Fatalf("counts %d mailboxes %d messages", mb, msgs)
	}
}

// An event that cannot be applied fails alone; the others in its batch
// commit.
func TestBadEventFailsAlone(t *testing.T) {
	t.Parallel()
	s := openTest(t, t.TempDir())
	defer s.Close()
	ctx := context.Background()
	if _, err := s.Commit(ctx, Event{Kind: EvMkdir, Path: "a/cur", IsDir: true}); err != nil {
		t.Fatal(err)
	}
	var pend []*Pending
	for i := 0; i < 10; i++ {
		ev := deliverEvent("a", i)
		if i == 5 {
			ev.NewPath = "a/new/.malformed"
		}
		p, err := s.Submit(ev)
		if err != nil {
			t.Fatal(err)
		}
		pend = append(pend, p)
	}
	for i, p := range pend {
		_, err := p.Wait()
		if (i == 5) != (err != nil) {
			t.Fatalf("event %d: err %v", i, err)
		}
	}
	if _, msgs := s.Counts(); msgs != 9 || s.Seq() != 10 {
		t.Fatalf("messages %d seq %d, want 9 and 10", msgs, s.Seq())
	}
}

// State, seq, counts and the clean flag survive a reopen.
func TestReopen(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openTest(t, dir)
	ctx := context.Background()
	if _, err := s.Commit(ctx, Event{Kind: EvMkdir, Path: "a/cur", IsDir: true}, deliverEvent("a", 1)); err != nil {
		t.Fatal(err)
	}
	node, last := s.Node(), s.clock.Last()
	if s.WasClean() != true {
		t.Fatal("a new store counts as clean")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Node() != node || s.Seq() != 2 || !s.WasClean() || !last.Less(s.clock.Now()) {
		t.Fatalf("after reopen: node %s seq %d clean %v", s.Node().Short(), s.Seq(), s.WasClean())
	}
	if mb, msgs := s.Counts(); mb != 1 || msgs != 1 {
		t.Fatalf("counts %d %d", mb, msgs)
	}
	if _, err := Open(t.TempDir(), Options{}); err == nil {
		t.Fatal("an index without identity opened")
	}
}
