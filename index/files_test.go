package index

import (
	"context"
	"crypto/sha256"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"mailfs/journal"
	"mailfs/maildir"
)

// registers is one node's plain-file registers, for replaying ops in a
// chosen order.
type registers struct {
	self journal.NodeID
	regs map[string]fileRegRec
}

func (n *registers) apply(t *testing.T, op *journal.Op) {
	t.Helper()
	steps, err := fileSteps(func(p string) (fileRegRec, error) { return n.regs[p], nil }, n.self, op)
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range steps {
		n.regs[st.path] = st.after
	}
}

// tree is what the registers show: path → "origin8-seq" of the version.
func (n *registers) tree() map[string]string {
	out := map[string]string{}
	for p, r := range n.regs {
		for _, s := range r.view(p) {
			out[s.Path] = fmt.Sprintf("%s-%d", s.Head.Origin.Short(), s.Head.Seq)
		}
	}
	return out
}

func node(b byte) journal.NodeID {
	var n journal.NodeID
	for i := range n {
		n[i] = b
	}
	return n
}

var nodeA, nodeB, nodeC = node(0xaa), node(0xbb), node(0xcc)

func write(origin journal.NodeID, seq uint64, wall int64, p, content string, replaces ...Dot) *journal.Op {
	op := &journal.Op{Kind: journal.FileWrite, Origin: origin, Seq: seq, Time: journal.HLC{WallMs: wall}, Path: p,
		Mode: 0o644, Size: int64(len(content))}
	copy(op.Content[:], content)
	op.Seen = seenOfAll(replaces)
	return op
}

func seenOfAll(ds []Dot) journal.VersionVector {
	if len(ds) == 0 {
		return nil
	}
	vv := journal.VersionVector{}
	for _, d := range ds {
		vv[d.Origin] = d.Seq
	}
	return vv
}

func del(origin journal.NodeID, seq uint64, wall int64, p string, replaces Dot) *journal.Op {
	return &journal.Op{Kind: journal.FileDelete, Origin: origin, Seq: seq, Time: journal.HLC{WallMs: wall}, Path: p,
		Seen: seenOfAll([]Dot{replaces})}
}

// orders lists every interleaving of the per-origin op sequences (each
// origin's ops arrive in seq order, as replication sends them).
func orders(streams [][]*journal.Op) [][]*journal.Op {
	var out [][]*journal.Op
	var rec func(prefix []*journal.Op, rest [][]*journal.Op)
	rec = func(prefix []*journal.Op, rest [][]*journal.Op) {
		done := true
		for i, s := range rest {
			if len(s) == 0 {
				continue
			}
			done = false
			next := slices.Clone(rest)
			next[i] = s[1:]
			rec(append(slices.Clone(prefix), s[0]), next)
		}
		if done {
			out = append(out, prefix)
		}
	}
	rec(nil, streams)
	return out
}

func dotName(o journal.NodeID, seq uint64) string { return fmt.Sprintf("%s-%d", o.Short(), seq) }

// TestPlainFileVersionsConverge replays the ops of each scenario in every
// order of arrival (and each twice, as after a crash) and checks that the
// tree is always the one rule 10 gives.
func TestPlainFileVersionsConverge(t *testing.T) {
	const p = "example.com/alice/sieve/main.sieve"
	a1 := Dot{nodeA, 1}
	cases := []struct {
		name    string
		streams [][]*journal.Op
		want    map[string]string
	}{{
		name:    "concurrent writes: newest at the path, older as conflict copy",
		streams: [][]*journal.Op{{write(nodeA, 1, 100, p, "a")}, {write(nodeB, 1, 200, p, "b")}},
		want:    map[string]string{p: dotName(nodeB, 1), ConflictName(p, Dot{nodeA, 1}): dotName(nodeA, 1)},
	}, {
		name: "sequential writes on one node are no conflict; only the last meets the other node's",
		streams: [][]*journal.Op{
			{write(nodeA, 1, 100, p, "a1"), write(nodeA, 2, 300, p, "a2", a1)},
			{write(nodeB, 1, 200, p, "b")}},
		want: map[string]string{p: dotName(nodeA, 2), ConflictName(p, Dot{nodeB, 1}): dotName(nodeB, 1)},
	}, {
		name: "a write replacing a version a third node has not received yet",
		streams: [][]*journal.Op{
			{write(nodeA, 1, 100, p, "a")},
			{write(nodeB, 1, 200, p, "b", a1)}},
		want: map[string]string{p: dotName(nodeB, 1)},
	}, {
		name:    "the same bytes written on two nodes: no copy",
		streams: [][]*journal.Op{{write(nodeA, 1, 100, p, "same")}, {write(nodeB, 1, 200, p, "same")}},
		want:    map[string]string{p: dotName(nodeB, 1)},
	}, {
		name: "a delete newer than a write it had not seen keeps the write as conflict copy",
		streams: [][]*journal.Op{
			{write(nodeA, 1, 100, p, "base"), write(nodeA, 2, 200, p, "edit", a1)},
			{del(nodeB, 1, 300, p, a1)}},
		want: map[string]string{ConflictName(p, Dot{nodeA, 2}): dotName(nodeA, 2)},
	}, {
		name: "a write newer than a concurrent delete stays at the path",
		streams: [][]*journal.Op{
			{write(nodeA, 1, 100, p, "base"), write(nodeA, 2, 300, p, "edit", a1)},
			{del(nodeB, 1, 200, p, a1)}},
		want: map[string]string{p: dotName(nodeA, 2)},
	}, {
		name: "a deleted conflict copy is not made again on a node that had not made it",
		streams: [][]*journal.Op{
			{write(nodeA, 1, 100, p, "a")},
			{write(nodeB, 1, 200, p, "b"), del(nodeB, 2, 300, ConflictName(p, a1), a1)}},
		want: map[string]string{p: dotName(nodeB, 1)},
	}, {
		name: "an edited conflict copy is a file of its own",
		streams: [][]*journal.Op{
			{write(nodeA, 1, 100, p, "a")},
			{write(nodeB, 1, 200, p, "b"), write(nodeB, 2, 300, ConflictName(p, a1), "a, edited", a1)}},
		want: map[string]string{p: dotName(nodeB, 1), ConflictName(p, a1): dotName(nodeB, 2)},
	}, {
		name: "a write over bytes written alike on two nodes replaces both",
		streams: [][]*journal.Op{
			{write(nodeA, 1, 100, p, "same"), write(nodeA, 2, 300, p, "new", a1, Dot{nodeC, 1})},
			{write(nodeC, 1, 200, p, "same")}},
		want: map[string]string{p: dotName(nodeA, 2)},
	}, {
		name: "a write over bytes written alike, by a node that had only one of them",
		streams: [][]*journal.Op{
			{write(nodeA, 1, 100, p, "same")},
			{write(nodeB, 1, 300, p, "new", a1)},
			{write(nodeC, 1, 200, p, "same")}},
		want: map[string]string{p: dotName(nodeB, 1), ConflictName(p, Dot{nodeC, 1}): dotName(nodeC, 1)},
	}, {
		name: "ops that name no replaced version (journaled before they did) replace their writer's own",
		streams: [][]*journal.Op{
			{write(nodeA, 1, 100, p, "a1"), write(nodeA, 2, 300, p, "a2")},
			{write(nodeB, 1, 200, p, "b1"), write(nodeB, 2, 400, p, "b2")}},
		want: map[string]string{p: dotName(nodeB, 2), ConflictName(p, Dot{nodeA, 2}): dotName(nodeA, 2)},
	}, {
		name: "three nodes write concurrently",
		streams: [][]*journal.Op{
			{write(nodeA, 1, 300, p, "a")}, {write(nodeB, 1, 100, p, "b")}, {write(nodeC, 1, 200, p, "c")}},
		want: map[string]string{p: dotName(nodeA, 1), ConflictName(p, Dot{nodeB, 1}): dotName(nodeB, 1),
			ConflictName(p, Dot{nodeC, 1}): dotName(nodeC, 1)},
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			all := orders(tc.streams)
			if len(all) < 2 && len(tc.streams) > 1 {
				t.Fatalf("only %d orders", len(all))
			}
			for _, order := range all {
				for _, self := range []journal.NodeID{nodeA, nodeB, nodeC} {
					if !possible(order, self) {
						continue
					}
					n := &registers{self: self, regs: map[string]fileRegRec{}}
					for _, op := range order {
						n.apply(t, op)
						n.apply(t, op) // replayed after a crash: no change
					}
					if got := n.tree(); !maps.Equal(got, tc.want) {
						t.Errorf("node %s, order %s: tree %v, want %v", self.Short(), describe(order), got, tc.want)
					}
				}
			}
		})
	}
}

// possible reports whether self can see ops in this order: an op that
// replaced one of self's versions comes after that version was made, and
// self's own ops come after the versions they replaced.
func possible(order []*journal.Op, self journal.NodeID) bool {
	made := map[Dot]bool{}
	for _, op := range order {
		for _, r := range ReplacedDots(op) {
			if (r.Origin == self || op.Origin == self) && !made[r] {
				return false
			}
		}
		made[DotOf(op)] = true
	}
	return true
}

func describe(ops []*journal.Op) string {
	var parts []string
	for _, op := range ops {
		parts = append(parts, fmt.Sprintf("%s%s-%d", map[journal.Kind]string{journal.FileWrite: "w", journal.FileDelete: "d"}[op.Kind],
			op.Origin.Short()[:2], op.Seq))
	}
	return strings.Join(parts, ",")
}

// TestConflictNamesStayPlainFiles: a conflict copy of a plain file is a
// plain file, never a message, cache, lock or special file.
func TestConflictNamesStayPlainFiles(t *testing.T) {
	d := Dot{nodeA, 42}
	for _, p := range []string{"a/Maildir/.Sent/maildirfolder", "a/Maildir/dovecot-shared", "a/Maildir/dovecot-acl",
		"a/sieve/main.sieve", "a/.dovecot.sieve", "a/Maildir/notes.txt"} {
		if k := maildir.Classify(p, false).Kind; k != maildir.KindPlainFile {
			t.Fatalf("%s is %s, want a plain file", p, k)
		}
		c := ConflictName(p, d)
		if k := maildir.Classify(c, false).Kind; k != maildir.KindPlainFile {
			t.Errorf("conflict copy %s is %s, want a plain file", c, k)
		}
		if base, ok := conflictBase(c, d); !ok || base != p {
			t.Errorf("conflictBase(%q) = %q, %v; want %q", c, base, ok, p)
		}
		if _, ok := conflictBase(c, Dot{nodeB, 42}); ok {
			t.Errorf("conflictBase(%q) matched another node's dot", c)
		}
	}
}

// TestLocalPlainFileOpsNameWhatTheyReplace: a local write or delete names
// the version the path showed, and the versions with the same bytes hidden
// behind it; a change to a conflict copy names the version it keeps.
func TestLocalPlainFileOpsNameWhatTheyReplace(t *testing.T) {
	t.Parallel()
	s := openTest(t, t.TempDir())
	defer s.Close()
	ctx := context.Background()
	self := s.Node()
	const p = "u/sieve/main.sieve"
	content := func(c string) journal.ContentID { return sha256.Sum256([]byte(c)) }
	local := func(ev Event) journal.Op {
		t.Helper()
		ops, err := s.Commit(ctx, ev)
		if err != nil || len(ops) != 1 {
			t.Fatalf("commit %v: ops %v, %v", ev.Kind, ops, err)
		}
		return ops[0]
	}
	write := func(path, c string) journal.Op {
		return local(Event{Kind: EvWrite, Path: path, File: FileInfo{Mode: 0o100644, Size: int64(len(c)), Content: content(c)}})
	}
	// peer applies a peer's op as the applier does: the file written
	// where the new view shows it (at), then the op's versions recorded.
	peer := func(op *journal.Op, at string) {
		t.Helper()
		if at != "" {
			if _, err := s.Commit(ctx, Event{Kind: EvWrite, Path: at, File: FileInfo{Mode: op.Mode, Size: op.Size,
				Content: op.Content}, Remote: op}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := s.Commit(ctx, Event{Kind: EvRemoteMeta, Remote: op}); err != nil {
			t.Fatal(err)
		}
	}
	later := journal.HLC{WallMs: time.Now().Add(time.Hour).UnixMilli()}

	a1 := write(p, "same")
	if a1.Seen != nil {
		t.Fatalf("first write replaces %v, want nothing", a1.Seen)
	}
	// The peer wrote the same bytes, later: one file, two versions.
	b1 := &journal.Op{Kind: journal.FileWrite, Origin: nodeB, Seq: 1, Time: later, Path: p, Mode: 0o100644, Size: 4,
		Content: content("same")}
	peer(b1, p)
	a2 := write(p, "mine")
	if want := (journal.VersionVector{self: a1.Seq, nodeB: 1}); !maps.Equal(a2.Seen, want) {
		t.Fatalf("write over bytes written alike replaces %v, want %v", a2.Seen, want)
	}
	// A concurrent older peer version becomes a conflict copy; changing
	// the copy names that version.
	c1 := &journal.Op{Kind: journal.FileWrite, Origin: nodeC, Seq: 1, Time: journal.HLC{WallMs: 1}, Path: p, Mode: 0o100644,
		Size: 6, Content: content("theirs")}
	var changes []FileChange
	if err := s.View(func(v PeerView) error {
		var err error
		changes, err = v.PlainFileChanges(c1)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	cp := ConflictName(p, Dot{nodeC, 1})
	if len(changes) != 1 || len(changes[0].After) != 2 || changes[0].After[1].Path != cp {
		t.Fatalf("an older concurrent version shows as %+v, want it at %s", changes, cp)
	}
	peer(c1, cp)
	edit := write(cp, "theirs, edited")
	if want := (journal.VersionVector{nodeC: 1}); !maps.Equal(edit.Seen, want) {
		t.Fatalf("editing the conflict copy replaces %v, want %v", edit.Seen, want)
	}
	del := local(Event{Kind: EvUnlink, Path: p})
	if want := (journal.VersionVector{self: a2.Seq}); del.Kind != journal.FileDelete || !maps.Equal(del.Seen, want) {
		t.Fatalf("delete %v replaces %v, want %v", del.Kind, del.Seen, want)
	}
	// Nothing left of P's register but the delete.
	if err := s.View(func(v PeerView) error {
		r, err := v.t.fileReg(p)
		if err == nil && (len(r.Heads) != 1 || !r.Heads[0].Deleted) {
			err = fmt.Errorf("heads of %s after the delete: %+v", p, r.Heads)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

// TestRestoredVersionShowsWhereItsRegisterDoes: a full sync puts back a
// vanished file as a version without an op of its own (seq 0); a conflict
// copy goes back where its original's register shows it, and no register
// changes.
func TestRestoredVersionShowsWhereItsRegisterDoes(t *testing.T) {
	t.Parallel()
	s := openTest(t, t.TempDir())
	defer s.Close()
	ctx := context.Background()
	const p = "u/sieve/main.sieve"
	content := sha256.Sum256([]byte("older"))
	if _, err := s.Commit(ctx, Event{Kind: EvWrite, Path: p, File: FileInfo{Mode: 0o100644, Size: 5, Content: sha256.Sum256([]byte("newer"))}}); err != nil {
		t.Fatal(err)
	}
	older := &journal.Op{Kind: journal.FileWrite, Origin: nodeB, Seq: 7, Time: journal.HLC{WallMs: 1}, Path: p, Mode: 0o100644,
		Size: 5, Content: content}
	cp := ConflictName(p, Dot{nodeB, 7})
	for _, ev := range []Event{{Kind: EvWrite, Path: cp, File: FileInfo{Mode: 0o100644, Size: 5, Content: content}, Remote: older},
		{Kind: EvRemoteMeta, Remote: older}} {
		if _, err := s.Commit(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	restore := &journal.Op{Kind: journal.FileWrite, Origin: nodeB, Time: older.Time, Path: cp, Mode: 0o100644, Size: 5,
		Content: content}
	var changes []FileChange
	if err := s.View(func(v PeerView) error {
		var err error
		changes, err = v.PlainFileChanges(restore)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if len(changes) != 1 || changes[0].Path != p || len(changes[0].After) != 2 || changes[0].After[1].Path != cp ||
		!slices.Equal(changes[0].Before, changes[0].After) {
		t.Fatalf("restoring %s: %+v, want %s's register shown as it is", cp, changes, p)
	}
}

// TestPendingVersionsAreBounded: a version named as replaced before it
// arrived waits for it; one that cannot arrive any more (its origin's
// later op came first) is forgotten.
func TestPendingVersionsAreBounded(t *testing.T) {
	const p = "u/sieve/x"
	n := &registers{self: nodeC, regs: map[string]fileRegRec{}}
	n.apply(t, write(nodeB, 1, 200, p, "b", Dot{nodeA, 5}, Dot{nodeC, 9}))
	if got := n.regs[p].Pending; !slices.Equal(got, []Dot{{nodeA, 5}}) {
		t.Fatalf("pending %v, want only A's version 5 (this node's own are all here)", got)
	}
	n.apply(t, write(nodeA, 7, 300, p, "a"))
	if got := n.regs[p].Pending; len(got) != 0 {
		t.Fatalf("pending %v after A's op 7, want none (A's op 5 would have come first)", got)
	}
}
