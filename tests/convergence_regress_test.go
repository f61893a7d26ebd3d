package tests

import (
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"mailfs/index"
	"mailfs/journal"
)

// TestConvergenceRegressions replays, over cut links, interleavings the
// randomized convergence test found diverging, each reduced to the few
// operations that matter.
func TestConvergenceRegressions(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 2)
	a, b := c.nodes[0], c.nodes[1]
	when := time.Date(2025, 6, 1, 8, 0, 0, 0, time.UTC)
	body := func(s string) []byte { return []byte("Subject: " + s + "\r\n\r\n" + s + "\r\n") }

	// The deleter recreates the folder for the mail it had not seen; the
	// flag changes and expunges that followed that mail on the other side
	// must find it there too (they name the deleted folder's GUID).
	t.Run("mail kept from a deleted folder is flagged and expunged afterwards", func(t *testing.T) {
		c.t = t
		root := "r1/Maildir"
		mkMailbox(t, a.Mnt, root)
		mkMailbox(t, a.Mnt, root+"/.D")
		deliverMsg(t, a.Mnt, root+"/.D", "cur", "1000.M1.a:2,S", body("seen by b"), when)
		c.converge("setup")
		c.partition()
		deleteMailboxDovecotStyle(t, b.Mnt, root+"/.D")
		deliverMsg(t, a.Mnt, root+"/.D", "new", "1001.M2.a", body("kept"), when)
		deliverMsg(t, a.Mnt, root+"/.D", "new", "1002.M3.a", body("expunged later"), when)
		setFlags(t, a.Mnt, root+"/.D", "1001.M2.a", "FS")
		sub, name := findMsg(t, a.Mnt, root+"/.D", "1002.M3.a")
		if err := os.Remove(filepath.Join(a.Mnt, root+"/.D", sub, name)); err != nil {
			t.Fatal(err)
		}
		st := c.converge("delete vs new mail, flagged and expunged")
		got := st.Mailboxes[root+"/.D"]
		if m, ok := got["1001.M2.a"]; !ok || len(got) != 1 || m.Flags != `\Flagged \Seen` || m.Sub != "cur" {
			t.Fatalf(".D holds %+v; want only 1001.M2.a, flagged and seen, in cur", got)
		}
		sameGUIDs(t, c)
	})

	// A same-name folder created on the other side after a rename there
	// merges with the renamed folder; the merged folder has the renamed
	// path on both sides (the other side's create is no rename).
	t.Run("folder created, renamed, and created again on the other side", func(t *testing.T) {
		c.t = t
		root := "r2/Maildir"
		mkMailbox(t, a.Mnt, root)
		c.converge("setup")
		c.partition()
		mkMailbox(t, a.Mnt, root+"/.W")
		deliverMsg(t, a.Mnt, root+"/.W", "new", "2000.M1.a", body("on a"), when)
		if err := os.Rename(filepath.Join(a.Mnt, root, ".W"), filepath.Join(a.Mnt, root, ".R")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
		mkMailbox(t, b.Mnt, root+"/.W")
		deliverMsg(t, b.Mnt, root+"/.W", "new", "2001.M1.b", body("on b"), when)
		st := c.converge("create, rename vs create")
		if len(st.Mailboxes[root+"/.R"]) != 2 || st.Mailboxes[root+"/.W"] != nil {
			t.Fatalf("after create+rename vs create: .R %v, .W %v; want both messages in .R", st.Mailboxes[root+"/.R"],
				st.Mailboxes[root+"/.W"])
		}
		sameGUIDs(t, c)
	})

	// Mail the deleter had not seen recreates the folder on the deleter
	// even when it was expunged or moved away before the delete arrived on
	// the other side: the other side keeps the folder (empty) too.
	t.Run("folder deleted while the other side added and removed mail", func(t *testing.T) {
		c.t = t
		root := "r4/Maildir"
		mkMailbox(t, a.Mnt, root)
		mkMailbox(t, a.Mnt, root+"/.E")
		mkMailbox(t, a.Mnt, root+"/.M")
		deliverMsg(t, a.Mnt, root+"/.E", "cur", "4000.M1.a:2,S", body("seen by a"), when)
		deliverMsg(t, a.Mnt, root+"/.M", "cur", "4001.M1.a:2,S", body("seen by a"), when)
		c.converge("setup")
		c.partition()
		deleteMailboxDovecotStyle(t, a.Mnt, root+"/.E")
		deleteMailboxDovecotStyle(t, a.Mnt, root+"/.M")
		deliverMsg(t, b.Mnt, root+"/.E", "new", "4002.M2.b", body("expunged"), when)
		if err := os.Remove(filepath.Join(b.Mnt, root, ".E", "new", "4002.M2.b")); err != nil {
			t.Fatal(err)
		}
		deliverMsg(t, b.Mnt, root+"/.M", "new", "4003.M2.b", body("moved"), when)
		if err := os.Rename(filepath.Join(b.Mnt, root, ".M", "new", "4003.M2.b"), filepath.Join(b.Mnt, root, "new", "4003.M2.b")); err != nil {
			t.Fatal(err)
		}
		st := c.converge("delete vs mail added and removed")
		if _, ok := st.Mailboxes[root]["4003.M2.b"]; !ok {
			t.Fatalf("the moved message is not in %s: %v", root, st.Mailboxes[root])
		}
		for _, mb := range []string{root + "/.E", root + "/.M"} {
			if got, ok := st.Mailboxes[mb]; !ok || len(got) != 0 {
				t.Fatalf("%s: %v (there: %v); want it kept, empty", mb, got, ok)
			}
		}
		sameGUIDs(t, c)
	})

	// A daemon killed while it rewrote a subscriptions file leaves the
	// dotlock behind; the next daemon must not wait two minutes for it.
	t.Run("subscriptions lock left by a killed daemon", func(t *testing.T) {
		c.t = t
		dir := "r5/Maildir"
		mkMailbox(t, a.Mnt, dir)
		writeSubscriptions(t, a.Mnt, dir, "INBOX")
		c.converge("setup")
		lock := filepath.Join(a.Store, "maildir", dir, "subscriptions.lock")
		if err := os.WriteFile(lock, []byte("V\t2\n\nINBOX\nHalf\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		old := time.Now().Add(-30 * time.Second) // before a's daemon started, well within 2 minutes
		if err := os.Chtimes(lock, old, old); err != nil {
			t.Fatal(err)
		}
		writeSubscriptions(t, b.Mnt, dir, "INBOX", "Work")
		start := time.Now()
		st := c.converge("subscriptions after a stale lock")
		if got := st.Subs[dir+"/subscriptions"]; got != "INBOX|Work" {
			t.Fatalf("subscriptions: %q, want INBOX|Work", got)
		}
		if d := time.Since(start); d > 20*time.Second {
			t.Fatalf("converging took %v: the stale lock held it up", d)
		}
	})

	// One side flags and then expunges a message the other side moves: the
	// move brings it back in the target, with the flag change on both.
	t.Run("message flagged and expunged on one side, moved on the other", func(t *testing.T) {
		c.t = t
		root := "r11/Maildir"
		mkMailbox(t, a.Mnt, root)
		mkMailbox(t, a.Mnt, root+"/.X")
		deliverMsg(t, a.Mnt, root, "new", "11000.M1.a", body("moved"), when)
		c.converge("setup")
		c.partition()
		setFlags(t, a.Mnt, root, "11000.M1.a", "S")
		if err := os.Remove(filepath.Join(a.Mnt, root, "cur", "11000.M1.a:2,S")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(b.Mnt, root, "new", "11000.M1.a"), filepath.Join(b.Mnt, root, ".X", "new", "11000.M1.a")); err != nil {
			t.Fatal(err)
		}
		st := c.converge("flag+expunge vs move")
		if m, ok := st.Mailboxes[root+"/.X"]["11000.M1.a"]; !ok || m.Sub != "cur" || m.Flags != `\Seen` {
			t.Fatalf(".X holds %+v; want the moved message, seen, in cur", st.Mailboxes[root+"/.X"])
		}
	})

	// Both sides rename a folder; the newer rename's side then deletes it,
	// the other had filled it: the mail it kept lives at the newer path on
	// both, not at the older rename's.
	t.Run("folder renamed on both sides, deleted by the newer renamer", func(t *testing.T) {
		c.t = t
		root := "r10/Maildir"
		mkMailbox(t, a.Mnt, root)
		mkMailbox(t, a.Mnt, root+"/.A")
		c.converge("setup")
		c.partition()
		if err := os.Rename(filepath.Join(b.Mnt, root, ".A"), filepath.Join(b.Mnt, root, ".B")); err != nil {
			t.Fatal(err)
		}
		deliverMsg(t, b.Mnt, root+"/.B", "new", "10000.M1.b", body("kept"), when)
		time.Sleep(5 * time.Millisecond)
		if err := os.Rename(filepath.Join(a.Mnt, root, ".A"), filepath.Join(a.Mnt, root, ".C")); err != nil {
			t.Fatal(err)
		}
		deleteMailboxDovecotStyle(t, a.Mnt, root+"/.C")
		st := c.converge("renames vs delete with new mail")
		if got := st.Mailboxes[root+"/.C"]; len(got) != 1 || st.Mailboxes[root+"/.B"] != nil {
			t.Fatalf(".C holds %v, .B %v; want the new mail in .C", got, st.Mailboxes[root+"/.B"])
		}
		sameGUIDs(t, c)
	})

	// A local folder delete racing the applier's making of the folder can
	// leave it without tmp/ (or new/): a peer's mail must still arrive,
	// not fail on every retry.
	t.Run("mail into a folder that lost its tmp directory", func(t *testing.T) {
		c.t = t
		root := "r13/Maildir"
		mkMailbox(t, a.Mnt, root)
		mkMailbox(t, a.Mnt, root+"/.T")
		c.converge("setup")
		for _, d := range []string{"tmp", "new"} {
			if err := os.Remove(filepath.Join(b.Mnt, root, ".T", d)); err != nil {
				t.Fatal(err)
			}
		}
		deliverMsg(t, a.Mnt, root+"/.T", "new", "13000.M1.a", body("arrives"), when)
		st := c.converge("mail into a folder without tmp")
		if _, ok := st.Mailboxes[root+"/.T"]["13000.M1.a"]; !ok {
			t.Fatalf(".T holds %v; want 13000.M1.a", st.Mailboxes[root+"/.T"])
		}
	})

	// B deletes a folder and makes a new one of the same name while A
	// fills the old one: on A the folder kept for that mail meets B's new
	// one, and they merge, as on B (B's create had seen the old folder's,
	// but the kept one is no longer only what that create made).
	t.Run("folder deleted and made again while the other side filled it", func(t *testing.T) {
		c.t = t
		root := "r16/Maildir"
		mkMailbox(t, b.Mnt, root)
		mkMailbox(t, b.Mnt, root+"/.A")
		c.converge("setup")
		c.partition()
		deliverMsg(t, a.Mnt, root+"/.A", "new", "16000.M1.a", body("kept"), when)
		deleteMailboxDovecotStyle(t, b.Mnt, root+"/.A")
		mkMailbox(t, b.Mnt, root+"/.A")
		st := c.converge("delete and create vs new mail")
		var under []string
		for mb := range st.Mailboxes {
			if strings.HasPrefix(mb, root) {
				under = append(under, mb)
			}
		}
		if got := st.Mailboxes[root+"/.A"]; len(got) != 1 || len(under) != 2 {
			t.Fatalf(".A holds %v, folders %v; want the kept mail in the one .A", got, under)
		}
		sameGUIDs(t, c)
	})

	// A message moved to another folder and back: the peer applies both
	// moves, and the second must not take the first's trace in the folder
	// it left for an expunge there (the message would be lost).
	t.Run("message moved to another folder and back", func(t *testing.T) {
		c.t = t
		root := "r22/Maildir"
		mkMailbox(t, a.Mnt, root)
		mkMailbox(t, a.Mnt, root+"/.X")
		deliverMsg(t, a.Mnt, root, "cur", "22000.M1.a:2,S", body("there and back"), when)
		c.converge("setup")
		for _, mv := range [][2]string{{root, root + "/.X"}, {root + "/.X", root}} {
			if err := os.Rename(filepath.Join(a.Mnt, mv[0], "cur", "22000.M1.a:2,S"),
				filepath.Join(a.Mnt, mv[1], "cur", "22000.M1.a:2,S")); err != nil {
				t.Fatal(err)
			}
		}
		st := c.converge("moved and moved back")
		if _, ok := st.Mailboxes[root]["22000.M1.a"]; !ok {
			t.Fatalf("%s holds %v, .X %v; want 22000.M1.a back in %s", root, st.Mailboxes[root], st.Mailboxes[root+"/.X"], root)
		}
	})
	// B fills its folder .S while A deletes it and makes a new .S with
	// mail; B renames the old one away before A's delete arrives. On A the
	// folder kept for B's mail meets A's new .S and they merge (r16), and
	// B's rename then moves the merged folder: on B, A's new .S must merge
	// with the kept folder at its renamed path too.
	t.Run("folder deleted and made again while the other side filled and renamed it", func(t *testing.T) {
		c.t = t
		root := "r35/Maildir"
		mkMailbox(t, a.Mnt, root)
		mkMailbox(t, b.Mnt, root+"/.S")
		c.converge("setup")
		c.partition()
		deliverMsg(t, b.Mnt, root+"/.S", "new", "35000.M1.b", body("kept, expunged"), when)
		deleteMailboxDovecotStyle(t, a.Mnt, root+"/.S")
		mkMailbox(t, a.Mnt, root+"/.S")
		deliverMsg(t, a.Mnt, root+"/.S", "cur", "35001.M2.a:2,S", body("in the new .S"), when)
		if err := os.Rename(filepath.Join(b.Mnt, root, ".S"), filepath.Join(b.Mnt, root, ".R")); err != nil {
			t.Fatal(err)
		}
		c.healFrom(0, 1)
		c.pushed(0, 1)
		if err := os.Remove(filepath.Join(b.Mnt, root, ".R", "new", "35000.M1.b")); err != nil {
			t.Fatal(err)
		}
		st := c.converge("delete and create vs new mail and rename")
		if got := st.Mailboxes[root+"/.R"]; len(got) != 1 || st.Mailboxes[root+"/.S"] != nil {
			t.Fatalf(".R holds %v, .S %v; want A's new mail in .R (folders %v)", got, st.Mailboxes[root+"/.S"], keys(st.Mailboxes))
		}
		sameGUIDs(t, c)
	})
	// A and B both make .S; A merges B's into its own (B's GUID is the
	// higher) and adds mail to it, naming B's GUID, while B deletes its
	// .S, not having seen A's. A keeps the folder for A's create and for
	// that mail, under the higher of A's GUID and the one derived from
	// B's (rules 3 and 4); B, which gets A's create after its delete (and
	// so keeps B's deleted GUID as a name of A's folder), must give the
	// folder the derived GUID too when the mail naming B's GUID comes.
	t.Run("mail into a merged folder its other creator deleted", func(t *testing.T) {
		c.t = t
		root := "r38/Maildir"
		mkMailbox(t, a.Mnt, root)
		c.converge("setup")
		c.partition()
		mb := concurrentPairWhere(t, root+"/.S", a, b, "B's GUID and the one derived from it above A's",
			func(ga, gb journal.GUID) bool { return above(gb, ga) && above(index.RecreatedGUID(gb), ga) })
		c.healFrom(1, 0)
		c.pushed(1, 0)
		c.cut(0, 1)
		deliverMsg(t, a.Mnt, mb, "new", "38000.M1.a", body("kept"), when)
		deleteMailboxDovecotStyle(t, b.Mnt, mb)
		st := c.converge("mail into a merged folder vs its other creator's delete")
		if got := st.Mailboxes[mb]; len(got) != 1 {
			t.Fatalf("%s holds %v; want A's mail (folders %v)", mb, got, keys(st.Mailboxes))
		}
		sameGUIDs(t, c)
	})

	// B deletes .S, makes .S again and renames the new one to .T, while A
	// adds mail to the old .S. On A the mail is kept at .S when the delete
	// comes, B's new .S merges with it there (rule 3) and the rename takes
	// both to .T. On B the mail comes after the rename: it must join the
	// folder made at .S since, now at .T, not make a .S of its own.
	t.Run("mail kept from a deleted folder after the folder made again at its path moved", func(t *testing.T) {
		c.t = t
		root := "r44/Maildir"
		mkMailbox(t, a.Mnt, root)
		mkMailbox(t, a.Mnt, root+"/.S")
		c.converge("setup")
		c.cut(0, 1)
		deleteMailboxDovecotStyle(t, b.Mnt, root+"/.S")
		mkMailbox(t, b.Mnt, root+"/.S")
		if err := os.Rename(filepath.Join(b.Mnt, root, ".S"), filepath.Join(b.Mnt, root, ".T")); err != nil {
			t.Fatal(err)
		}
		deliverMsg(t, a.Mnt, root+"/.S", "new", "44000.M1.a", body("not seen by the deleter"), when)
		c.healFrom(1, 0)
		c.pushed(1, 0)
		waitForPath(t, filepath.Join(a.Mnt, root, ".T", "new", "44000.M1.a"))
		st := c.converge("mail kept from a deleted folder, made again and moved")
		if got := st.Mailboxes[root+"/.T"]; len(got) != 1 || st.Mailboxes[root+"/.S"] != nil {
			t.Fatalf(".T holds %v; want A's mail there and no .S (folders %v)", got, keys(st.Mailboxes))
		}
		sameGUIDs(t, c)
	})
	// r44 with a change of A's that B sees between its delete and its
	// create: that change is beside the point (B had seen neither A's mail
	// to the old .S nor a rename of it), so the mail must still join the
	// folder B made at .S and renamed to .T.
	t.Run("mail kept from a deleted folder after the folder made again moved, an unrelated change seen between", func(t *testing.T) {
		c.t = t
		root := "r49/Maildir"
		mkMailbox(t, a.Mnt, root)
		mkMailbox(t, a.Mnt, root+"/.S")
		c.converge("setup")
		c.cut(0, 1)
		deleteMailboxDovecotStyle(t, b.Mnt, root+"/.S")
		deliverMsg(t, a.Mnt, root, "new", "49000.M1.a", body("unrelated"), when)
		c.healFrom(0, 1)
		c.pushed(0, 1)
		c.cut(0, 1)
		mkMailbox(t, b.Mnt, root+"/.S")
		if err := os.Rename(filepath.Join(b.Mnt, root, ".S"), filepath.Join(b.Mnt, root, ".T")); err != nil {
			t.Fatal(err)
		}
		deliverMsg(t, a.Mnt, root+"/.S", "new", "49001.M1.a", body("not seen by the deleter"), when)
		c.healFrom(1, 0)
		c.pushed(1, 0)
		waitForPath(t, filepath.Join(a.Mnt, root, ".T", "new", "49001.M1.a"))
		st := c.converge("mail kept from a deleted folder, made again and moved, unrelated change between")
		if got := st.Mailboxes[root+"/.T"]; len(got) != 1 || st.Mailboxes[root+"/.S"] != nil {
			t.Fatalf(".T holds %v; want A's mail there and no .S (folders %v)", got, keys(st.Mailboxes))
		}
		sameGUIDs(t, c)
	})

	// B moves a message out of a folder and back while A flags and expunges
	// it. Seen in the random test ("moves apart"): A kept the message,
	// because its expunge, which B's first move had followed to .X, was
	// taken for that move's trace when the second move came back; B did
	// not keep it. Whatever reaches whom first, both sides must agree.
	for _, order := range []string{"partitioned", "moves first", "expunge first", "flag between moves", "moves apart", "move back after the expunge"} {
		t.Run("message moved out and back vs flagged and expunged, "+order, func(t *testing.T) {
			c.t = t
			root := "r45" + strings.ReplaceAll(order, " ", "-") + "/Maildir"
			mkMailbox(t, a.Mnt, root)
			mkMailbox(t, a.Mnt, root+"/.X")
			deliverMsg(t, a.Mnt, root, "cur", "45000.M1.a:2,S", body("moved and expunged"), when)
			c.converge("setup")
			c.partition()
			moveOut := func() {
				if err := os.Rename(filepath.Join(b.Mnt, root, "cur", "45000.M1.a:2,S"), filepath.Join(b.Mnt, root, ".X", "cur", "45000.M1.a:2,S")); err != nil {
					t.Fatal(err)
				}
			}
			moveBack := func() {
				if err := os.Rename(filepath.Join(b.Mnt, root, ".X", "cur", "45000.M1.a:2,S"), filepath.Join(b.Mnt, root, "cur", "45000.M1.a:2,S")); err != nil {
					t.Fatal(err)
				}
			}
			flag := func() { setFlags(t, a.Mnt, root, "45000.M1.a", "FS") }
			expunge := func() {
				sub, name := findMsg(t, a.Mnt, root, "45000.M1.a")
				if err := os.Remove(filepath.Join(a.Mnt, root, sub, name)); err != nil {
					t.Fatal(err)
				}
			}
			switch order {
			case "partitioned":
				moveOut()
				moveBack()
				flag()
				expunge()
			case "moves first":
				moveOut()
				moveBack()
				c.healFrom(1, 0)
				c.pushed(1, 0)
				flag()
				expunge()
			case "expunge first":
				// A's expunge reaches B between B's two moves.
				moveOut()
				flag()
				expunge()
				c.healFrom(0, 1)
				c.pushed(0, 1)
				c.cut(0, 1)
				if _, err := os.Stat(filepath.Join(b.Mnt, root, ".X", "cur", "45000.M1.a:2,S")); err == nil {
					moveBack()
				}
			case "moves apart":
				// A's expunge comes before B's first move on A, and
				// before B's second move: A keeps the message in .X
				// (a move beats a concurrent expunge), then moves it
				// back. On B the expunge comes after both moves.
				moveOut()
				flag()
				expunge()
				c.healFrom(1, 0)
				c.pushed(1, 0)
				c.cut(0, 1)
				moveBack()
			case "move back after the expunge":
				// B moves the message back after A's expunge reached it:
				// that move is made knowing the expunge, and must stand
				// on A too, where the expunge was there first.
				moveOut()
				expunge()
				c.healFrom(0, 1)
				c.pushed(0, 1)
				c.cut(0, 1)
				moveBack()
			case "flag between moves":
				// A flags and expunges the message in .X, where B's
				// first move put it, while B moves it back: the move
				// back is no add into a mailbox A expunged it from, so
				// either outcome converges; it must be the same on both.
				moveOut()
				c.healFrom(1, 0)
				c.pushed(1, 0)
				c.cut(0, 1)
				setFlags(t, a.Mnt, root+"/.X", "45000.M1.a", "FS")
				moveBack()
				sub, name := findMsg(t, a.Mnt, root+"/.X", "45000.M1.a")
				if err := os.Remove(filepath.Join(a.Mnt, root, ".X", sub, name)); err != nil {
					t.Fatal(err)
				}
			}
			st := c.converge("move out and back vs flag and expunge, " + order)
			// Where the message ends: a move beats a concurrent expunge
			// in its source; an add (a move's, too) meets an expunge in
			// its target and is dropped (rules 5 and 7).
			want := map[string]string{"partitioned": "", "moves first": "", "moves apart": "",
				"expunge first": root + "/.X", "flag between moves": root, "move back after the expunge": root}[order]
			for _, mb := range []string{root, root + "/.X"} {
				if _, ok := st.Mailboxes[mb]["45000.M1.a"]; ok != (mb == want) {
					t.Fatalf("%s holds %v, .X %v; want the message only in %q", root, st.Mailboxes[root], st.Mailboxes[root+"/.X"], want)
				}
			}
			sameGUIDs(t, c)
		})
	}

	// A message file gone from B's disk behind mailfs's back while B runs
	// (its index still has it; the random test hit it after SIGKILLs):
	// A's expunge of it must not be refused on every resend, holding up
	// every later op of A's.
	t.Run("expunge of a message whose file is gone from the peer's disk", func(t *testing.T) {
		c.t = t
		root := "r51/Maildir"
		mkMailbox(t, a.Mnt, root)
		deliverMsg(t, a.Mnt, root, "cur", "51000.M1.a:2,S", body("gone on b"), when)
		deliverMsg(t, a.Mnt, root, "cur", "51001.M1.a:2,S", body("renamed behind b's back"), when)
		c.converge("setup")
		if err := os.Remove(filepath.Join(b.Store, "maildir", root, "cur", "51000.M1.a:2,S")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(b.Store, "maildir", root, "cur", "51001.M1.a:2,S"),
			filepath.Join(b.Store, "maildir", root, "cur", "51001.M1.a:2,FS")); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"51000.M1.a", "51001.M1.a"} {
			sub, name := findMsg(t, a.Mnt, root, k)
			if err := os.Remove(filepath.Join(a.Mnt, root, sub, name)); err != nil {
				t.Fatal(err)
			}
		}
		deliverMsg(t, a.Mnt, root, "new", "51002.M1.a", body("after the expunges"), when)
		st := c.converge("expunges of files gone or renamed behind mailfs's back")
		if got := st.Mailboxes[root]; len(got) != 1 || got["51002.M1.a"].Sub != "new" {
			t.Fatalf("%s holds %v; want only 51002.M1.a", root, got)
		}
		waitLog(t, b.mailfsProc, 5*time.Second, "the peer's expunge is recorded")
		waitLog(t, b.mailfsProc, 5*time.Second, "has another name than the index says")
	})

	// The same for a flag change and a move: B records the flag change on
	// the missing message (the full sync brings it back with the new
	// flags) and puts the moved one into the target from the body the
	// move carries.
	t.Run("flag change and move of messages whose files are gone from the peer's disk", func(t *testing.T) {
		c.t = t
		root := "r52/Maildir"
		mkMailbox(t, a.Mnt, root)
		mkMailbox(t, a.Mnt, root+"/.X")
		deliverMsg(t, a.Mnt, root, "cur", "52000.M1.a:2,S", body("flagged"), when)
		deliverMsg(t, a.Mnt, root, "cur", "52001.M1.a:2,S", body("moved"), when)
		c.converge("setup")
		for _, name := range []string{"52000.M1.a:2,S", "52001.M1.a:2,S"} {
			if err := os.Remove(filepath.Join(b.Store, "maildir", root, "cur", name)); err != nil {
				t.Fatal(err)
			}
		}
		setFlags(t, a.Mnt, root, "52000.M1.a", "FS")
		if err := os.Rename(filepath.Join(a.Mnt, root, "cur", "52001.M1.a:2,S"), filepath.Join(a.Mnt, root, ".X", "cur", "52001.M1.a:2,S")); err != nil {
			t.Fatal(err)
		}
		syncAll(t, a, b) // B acknowledges both ops instead of refusing them
		if _, err := os.Stat(filepath.Join(b.Mnt, root, ".X", "cur", "52001.M1.a:2,S")); err != nil {
			t.Fatalf("the moved message is not in .X on B: %v", err)
		}
		waitLog(t, b.mailfsProc, 5*time.Second, "marked missing (a full sync restores it)")
		if out, errs, code := runMailfs(t, "sync", "--full", "--store", b.Store, "--timeout", "60s"); code != 0 {
			t.Fatalf("sync --full on B: exit %d: %s%s", code, out, errs)
		}
		st := c.converge("flag change and move of files gone behind mailfs's back")
		if m, ok := st.Mailboxes[root]["52000.M1.a"]; !ok || m.Flags != `\Flagged \Seen` || len(st.Mailboxes[root]) != 1 {
			t.Fatalf("%s holds %v; want 52000.M1.a flagged and seen", root, st.Mailboxes[root])
		}
		if _, ok := st.Mailboxes[root+"/.X"]["52001.M1.a"]; !ok || len(st.Mailboxes[root+"/.X"]) != 1 {
			t.Fatalf(".X holds %v; want 52001.M1.a", st.Mailboxes[root+"/.X"])
		}
	})

	// A folder's whole directory gone from B's disk behind mailfs's back:
	// A's delivery into it must not be refused on every resend. B makes
	// the folder again (a second later, past any local change in flight)
	// and the full sync brings back what it held.
	t.Run("delivery into a folder whose directory is gone from the peer's disk", func(t *testing.T) {
		c.t = t
		root := "r54/Maildir"
		mkMailbox(t, a.Mnt, root)
		mkMailbox(t, a.Mnt, root+"/.X")
		deliverMsg(t, a.Mnt, root+"/.X", "cur", "54000.M1.a:2,S", body("there before"), when)
		c.converge("setup")
		if err := os.RemoveAll(filepath.Join(b.Store, "maildir", root, ".X")); err != nil {
			t.Fatal(err)
		}
		deliverMsg(t, a.Mnt, root+"/.X", "new", "54001.M1.a", body("after the directory went"), when)
		syncAll(t, a, b)
		waitLog(t, b.mailfsProc, 5*time.Second, "whose directory is gone from disk; made again")
		if out, errs, code := runMailfs(t, "sync", "--full", "--store", b.Store, "--timeout", "60s"); code != 0 {
			t.Fatalf("sync --full on B: exit %d: %s%s", code, out, errs)
		}
		st := c.converge("delivery into a folder gone behind mailfs's back")
		if got := st.Mailboxes[root+"/.X"]; len(got) != 2 {
			t.Fatalf(".X holds %v; want both messages", got)
		}
		sameGUIDs(t, c)
	})
}

// TestConvergenceRegressionsThreeNodes is TestConvergenceRegressions for
// interleavings that need a third node.
func TestConvergenceRegressionsThreeNodes(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 3)
	a, b, n3 := c.nodes[0], c.nodes[1], c.nodes[2]
	when := time.Date(2025, 6, 2, 8, 0, 0, 0, time.UTC)
	body := func(s string) []byte { return []byte("Subject: " + s + "\r\n\r\n" + s + "\r\n") }

	// A's rename of the third node's new folder reaches B before the
	// folder's create does: B creates it where it was and renames it.
	t.Run("rename arrives before the create", func(t *testing.T) {
		c.t = t
		root := "r3/Maildir"
		mkMailbox(t, a.Mnt, root)
		c.converge("setup")
		c.cut(1, 2)
		mkMailbox(t, n3.Mnt, root+"/.W")
		deliverMsg(t, n3.Mnt, root+"/.W", "new", "3000.M1.c", body("on c"), when)
		waitForPath(t, filepath.Join(a.Mnt, root, ".W", "new", "3000.M1.c"))
		if err := os.Rename(filepath.Join(a.Mnt, root, ".W"), filepath.Join(a.Mnt, root, ".R")); err != nil {
			t.Fatal(err)
		}
		waitForPath(t, filepath.Join(b.Mnt, root, ".R", "cur"))
		st := c.converge("rename before create")
		if len(st.Mailboxes[root+"/.R"]) != 1 || st.Mailboxes[root+"/.W"] != nil {
			t.Fatalf("after the rename overtook the create: .R %v, .W %v; want the message in .R", st.Mailboxes[root+"/.R"],
				st.Mailboxes[root+"/.W"])
		}
		sameGUIDs(t, c)
	})

	// Two nodes delete the same folder; mail either had seen goes, mail
	// neither had seen stays (in the folder recreated for it), on every
	// node whatever order the deletes and the mail arrive in.
	t.Run("folder deleted on two nodes while the third added mail", func(t *testing.T) {
		c.t = t
		root := "r6/Maildir"
		mkMailbox(t, a.Mnt, root)
		mkMailbox(t, a.Mnt, root+"/.S")
		c.converge("setup")
		c.cut(1, 2)
		c.cut(0, 1)
		deliverMsg(t, n3.Mnt, root+"/.S", "new", "6000.M1.c", body("seen by a only"), when)
		waitForPath(t, filepath.Join(a.Mnt, root, ".S", "new", "6000.M1.c"))
		c.cut(0, 2)
		deliverMsg(t, n3.Mnt, root+"/.S", "new", "6001.M2.c", body("seen by neither"), when)
		deleteMailboxDovecotStyle(t, a.Mnt, root+"/.S")
		deleteMailboxDovecotStyle(t, b.Mnt, root+"/.S")
		st := c.converge("two deletes vs new mail")
		got := st.Mailboxes[root+"/.S"]
		if _, ok := got["6001.M2.c"]; !ok || len(got) != 1 {
			t.Fatalf(".S holds %v; want only the mail neither deleter had seen", got)
		}
		sameGUIDs(t, c)
	})

	// A folder renamed by one node and filled by another, while a third
	// deleted it: the deleter gets the rename first and the mail later, and
	// must keep that mail where the others do, at the renamed path.
	t.Run("folder renamed and filled while deleted elsewhere", func(t *testing.T) {
		c.t = t
		root := "r7/Maildir"
		mkMailbox(t, b.Mnt, root)
		mkMailbox(t, b.Mnt, root+"/.A")
		c.converge("setup")
		c.cut(0, 1)
		c.cut(1, 2)
		if err := os.Rename(filepath.Join(n3.Mnt, root, ".A"), filepath.Join(n3.Mnt, root, ".B")); err != nil {
			t.Fatal(err)
		}
		waitForPath(t, filepath.Join(a.Mnt, root, ".B", "cur"))
		deliverMsg(t, a.Mnt, root+"/.B", "new", "7000.M1.a", body("kept"), when)
		deleteMailboxDovecotStyle(t, b.Mnt, root+"/.A")
		c.heal(1, 2)
		if out, errs, code := runMailfs(t, "sync", "--store", n3.Store, "--timeout", "30s"); code != 0 {
			t.Fatalf("mailfs sync on %s: exit %d: %s%s", n3.Name, code, out, errs)
		}
		st := c.converge("rename, new mail vs delete")
		if got := st.Mailboxes[root+"/.B"]; len(got) != 1 || st.Mailboxes[root+"/.A"] != nil {
			t.Fatalf(".B holds %v, .A %v; want the new mail in .B", got, st.Mailboxes[root+"/.A"])
		}
		sameGUIDs(t, c)
	})

	// The deleter gets a flag change to mail it had not seen before the
	// mail itself (from another node): the change must not be lost when the
	// mail arrives in the folder recreated for it.
	t.Run("flag change overtakes mail into a deleted folder", func(t *testing.T) {
		c.t = t
		root := "r8/Maildir"
		mkMailbox(t, n3.Mnt, root)
		mkMailbox(t, n3.Mnt, root+"/.W")
		c.converge("setup")
		c.cut(1, 2)
		c.cut(0, 1)
		deliverMsg(t, n3.Mnt, root+"/.W", "new", "8000.M1.c", body("flagged on a"), when)
		waitForPath(t, filepath.Join(a.Mnt, root, ".W", "new", "8000.M1.c"))
		setFlags(t, a.Mnt, root+"/.W", "8000.M1.c", "S")
		deleteMailboxDovecotStyle(t, b.Mnt, root+"/.W")
		c.heal(0, 1)
		if out, errs, code := runMailfs(t, "sync", "--store", a.Store, "--timeout", "30s"); code != 0 {
			t.Fatalf("mailfs sync on %s: exit %d: %s%s", a.Name, code, out, errs)
		}
		st := c.converge("flags before mail into a deleted folder")
		if m, ok := st.Mailboxes[root+"/.W"]["8000.M1.c"]; !ok || m.Flags != `\Seen` || m.Sub != "cur" {
			t.Fatalf(".W holds %+v; want 8000.M1.c seen, in cur", st.Mailboxes[root+"/.W"])
		}
		sameGUIDs(t, c)
	})

	// A rename reaches A before the folder's create (A then makes the
	// folder itself); the creator's delete, which had not seen the rename,
	// still deletes it there: A's making it is no create the deleter missed.
	t.Run("folder renamed before its create arrived, deleted by its creator", func(t *testing.T) {
		c.t = t
		root := "r9/Maildir"
		mkMailbox(t, a.Mnt, root)
		c.converge("setup")
		c.cut(0, 2)
		mkMailbox(t, n3.Mnt, root+"/.W")
		waitForPath(t, filepath.Join(b.Mnt, root, ".W", "cur"))
		c.cut(1, 2)
		if err := os.Rename(filepath.Join(b.Mnt, root, ".W"), filepath.Join(b.Mnt, root, ".R")); err != nil {
			t.Fatal(err)
		}
		waitForPath(t, filepath.Join(a.Mnt, root, ".R", "cur"))
		deleteMailboxDovecotStyle(t, n3.Mnt, root+"/.W")
		st := c.converge("rename before create vs delete")
		for _, mb := range []string{root + "/.W", root + "/.R"} {
			if _, ok := st.Mailboxes[mb]; ok {
				t.Fatalf("%s survives its delete: %v", mb, keys(st.Mailboxes))
			}
		}
		sameGUIDs(t, c)
	})

	// A flags a message, B expunges it, the third node moves it (none
	// seeing the others); B gets A's flags after its expunge and the move
	// last: the moved message must carry A's flags there too, as on the
	// nodes that had the flags before the move.
	t.Run("flags reach an expunger before a concurrent move", func(t *testing.T) {
		c.t = t
		root := "r10/Maildir"
		mkMailbox(t, b.Mnt, root)
		mkMailbox(t, b.Mnt, root+"/.X")
		deliverMsg(t, b.Mnt, root, "cur", "10000.M1.b:2,", body("flagged, expunged, moved"), when)
		c.converge("setup")
		c.partition()
		setFlags(t, a.Mnt, root, "10000.M1.b", "RS")
		if err := os.Remove(filepath.Join(b.Mnt, root, "cur", "10000.M1.b:2,")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(n3.Mnt, root, "cur", "10000.M1.b:2,"),
			filepath.Join(n3.Mnt, root, ".X", "cur", "10000.M1.b:2,")); err != nil {
			t.Fatal(err)
		}
		c.heal(0, 1)
		c.pushed(0, 1)
		st := c.converge("flags, expunge and move")
		if m, ok := st.Mailboxes[root+"/.X"]["10000.M1.b"]; !ok || m.Flags != `\Answered \Seen` {
			t.Fatalf(".X holds %+v; want the moved message answered and seen", st.Mailboxes[root+"/.X"])
		}
		sameGUIDs(t, c)
	})

	// C creates .F and renames it away; B, having seen both, creates its
	// own .F. A gets B's create before C's (or C's create, then B's, then
	// C's rename): the two are not one mailbox (B had seen C's leave the
	// path), so A must not merge them.
	for _, cOpsFirst := range []bool{false, true} {
		name := "folder created where a renamed one had been, its create first"
		if cOpsFirst {
			name = "folder created where a renamed one had been, the renamed one's create first"
		}
		t.Run(name, func(t *testing.T) {
			c.t = t
			root := "r14/Maildir"
			if cOpsFirst {
				root = "r15/Maildir"
			}
			mkMailbox(t, n3.Mnt, root)
			c.converge("setup")
			c.cut(0, 1)
			if !cOpsFirst {
				c.cut(0, 2)
			}
			mkMailbox(t, n3.Mnt, root+"/.F")
			deliverMsg(t, n3.Mnt, root+"/.F", "new", "14000.M1.c", body("in the renamed folder"), when)
			waitForPath(t, filepath.Join(b.Mnt, root, ".F", "new", "14000.M1.c"))
			if cOpsFirst {
				waitForPath(t, filepath.Join(a.Mnt, root, ".F", "new", "14000.M1.c"))
				c.cut(0, 2)
			}
			if err := os.Rename(filepath.Join(n3.Mnt, root, ".F"), filepath.Join(n3.Mnt, root, ".Q")); err != nil {
				t.Fatal(err)
			}
			waitForPath(t, filepath.Join(b.Mnt, root, ".Q", "cur"))
			mkMailbox(t, b.Mnt, root+"/.F")
			deliverMsg(t, b.Mnt, root+"/.F", "new", "14001.M2.b", body("in the new folder"), when)
			c.heal(0, 1)
			c.pushed(1, 0)
			st := c.converge("create where a renamed folder had been")
			if got := st.Mailboxes[root+"/.F"]; len(got) != 1 || got["14001.M2.b"] == (msgState{}) {
				t.Fatalf(".F holds %v; want only 14001.M2.b (folders: %v)", got, keys(st.Mailboxes))
			}
			if got := st.Mailboxes[root+"/.Q"]; len(got) != 1 || got["14000.M1.c"] == (msgState{}) {
				t.Fatalf(".Q holds %v; want only 14000.M1.c (folders: %v)", got, keys(st.Mailboxes))
			}
			sameGUIDs(t, c)
		})
	}

	// B and C make the same folder (they merge, C's GUID winning); B flags
	// its mail there, naming C's GUID. A gets B's ops first: the flag change
	// waits for its message under C's GUID, and must be applied when C's
	// create arrives and merges the folders on A.
	t.Run("flag change naming the merged folder before the merge", func(t *testing.T) {
		c.t = t
		root := "r17/Maildir"
		mkMailbox(t, a.Mnt, root)
		c.converge("setup")
		c.partition()
		var mb, gc string
		for i := 0; ; i++ {
			if i == 20 {
				t.Fatal("20 same-name folder pairs, none with the third node's GUID higher")
			}
			mb = fmt.Sprintf("%s/.W%d", root, i)
			mkMailbox(t, n3.Mnt, mb)
			mkMailbox(t, b.Mnt, mb)
			gc = mailboxGUIDs(t, n3.Store)[mb]
			if gc > mailboxGUIDs(t, b.Store)[mb] {
				break
			}
		}
		deliverMsg(t, b.Mnt, mb, "new", "17000.M1.b", body("flagged after the merge"), when)
		c.heal(1, 2)
		deadline := time.Now().Add(20 * time.Second)
		for mailboxGUIDs(t, b.Store)[mb] != gc {
			if time.Now().After(deadline) {
				t.Fatalf("%s did not merge %s into the third node's GUID", b.Name, mb)
			}
			time.Sleep(20 * time.Millisecond)
		}
		setFlags(t, b.Mnt, mb, "17000.M1.b", "S")
		c.heal(0, 1)
		c.pushed(1, 0)
		st := c.converge("flags naming the merged folder")
		if m, ok := st.Mailboxes[mb]["17000.M1.b"]; !ok || m.Flags != `\Seen` {
			t.Fatalf("%s holds %+v; want 17000.M1.b seen", mb, st.Mailboxes[mb])
		}
		sameGUIDs(t, c)
	})

	// B clears a message's flags, A (having seen that) moves it, C expunges
	// it; C gets A's move before B's change: the move brings the message
	// back in its target there, and B's change must follow it.
	t.Run("flag change after a move that brought an expunged message back", func(t *testing.T) {
		c.t = t
		root := "r18/Maildir"
		mkMailbox(t, a.Mnt, root)
		mkMailbox(t, a.Mnt, root+"/.S")
		deliverMsg(t, a.Mnt, root, "cur", "18000.M1.a:2,FS", body("moved"), when)
		c.converge("setup")
		c.partition()
		setFlags(t, b.Mnt, root, "18000.M1.a", "")
		c.heal(0, 1)
		c.pushed(1, 0)
		if err := os.Rename(filepath.Join(a.Mnt, root, "cur", "18000.M1.a:2,"), filepath.Join(a.Mnt, root, ".S", "cur", "18000.M1.a:2,")); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(filepath.Join(n3.Mnt, root, "cur", "18000.M1.a:2,FS")); err != nil {
			t.Fatal(err)
		}
		c.heal(0, 2)
		c.pushed(0, 2)
		st := c.converge("flags, move and expunge")
		if m, ok := st.Mailboxes[root+"/.S"]["18000.M1.a"]; !ok || m.Flags != "" {
			t.Fatalf(".S holds %+v; want 18000.M1.a without flags", st.Mailboxes[root+"/.S"])
		}
		sameGUIDs(t, c)
	})

	// C deletes a folder A has just filled; B keeps A's mail (C had not
	// seen it) under the recreated folder's GUID and flags it. A gets B's
	// flag change before C's delete: the change waits under the recreated
	// GUID, and must be applied when the delete makes that GUID A's too.
	t.Run("flag change to kept mail before the delete that kept it", func(t *testing.T) {
		c.t = t
		root := "r20/Maildir"
		mkMailbox(t, n3.Mnt, root)
		mkMailbox(t, n3.Mnt, root+"/.G")
		c.converge("setup")
		c.partition()
		deliverMsg(t, a.Mnt, root+"/.G", "new", "20000.M1.a", body("kept, flagged"), when)
		deleteMailboxDovecotStyle(t, n3.Mnt, root+"/.G")
		c.heal(0, 1)
		c.pushed(0, 1)
		c.cut(0, 1)
		c.heal(1, 2)
		c.pushed(2, 1)
		setFlags(t, b.Mnt, root+"/.G", "20000.M1.a", "DS")
		c.cut(1, 2)
		c.heal(0, 1)
		c.pushed(1, 0)
		st := c.converge("flags to kept mail before the delete")
		if m, ok := st.Mailboxes[root+"/.G"]["20000.M1.a"]; !ok || m.Flags != `\Draft \Seen` {
			t.Fatalf(".G holds %+v; want 20000.M1.a draft and seen", st.Mailboxes[root+"/.G"])
		}
		sameGUIDs(t, c)
	})

	// A deletes B's folder without having seen B's new mail; C keeps that
	// mail (in the folder recreated under the GUID derived from B's) and
	// renames it. B gets C's rename before A's delete: the rename names
	// B's folder's derived GUID, and B must not merge its folder with it as
	// another one (rule 3), or it derives a GUID of its own from that.
	t.Run("rename of kept mail's folder before the delete that kept it", func(t *testing.T) {
		c.t = t
		root := "r21/Maildir"
		mkMailbox(t, b.Mnt, root)
		// The derived GUID must be the higher one: a merge would then give
		// B's folder that GUID, and B's delete derive yet another from it.
		var mb string
		for i := 0; ; i++ {
			if i == 20 {
				t.Fatal("20 folders, none whose derived GUID is the higher")
			}
			mb = fmt.Sprintf("%s/.A%d", root, i)
			mkMailbox(t, b.Mnt, mb)
			g, err := hex.DecodeString(mailboxGUIDs(t, b.Store)[mb])
			if err != nil || len(g) != 16 {
				t.Fatalf("GUID of %s: %x, %v", mb, g, err)
			}
			if r := index.RecreatedGUID(journal.GUID(g)); string(r[:]) > string(g) {
				break
			}
		}
		c.converge("setup")
		c.partition()
		deliverMsg(t, b.Mnt, mb, "new", "21000.M1.b", body("kept, renamed"), when)
		deleteMailboxDovecotStyle(t, a.Mnt, mb)
		c.heal(1, 2)
		c.pushed(1, 2)
		c.cut(1, 2)
		c.heal(0, 2)
		c.pushed(0, 2)
		if err := os.Rename(filepath.Join(n3.Mnt, mb), filepath.Join(n3.Mnt, root, ".R")); err != nil {
			t.Fatal(err)
		}
		c.cut(0, 2)
		c.heal(1, 2)
		c.pushed(2, 1)
		st := c.converge("rename of kept mail before the delete")
		if got := st.Mailboxes[root+"/.R"]; len(got) != 1 {
			t.Fatalf(".R holds %v; want the kept mail (folders %v)", got, keys(st.Mailboxes))
		}
		sameGUIDs(t, c)
	})

	// A makes folder .F with mail; the third node renames it to .F2, and B
	// gets that rename before A's create (A and B cut off), so B makes .F2
	// for it. B then creates a .F of its own with mail, not having seen
	// A's create: the two are one folder by rule 3, as the nodes that had
	// A's create first merge them. B must merge the two folders it holds
	// on disk, .F into .F2, when A's create arrives.
	t.Run("folder created at a path its rename left, merged late", func(t *testing.T) {
		c.t = t
		root := "r22/Maildir"
		mkMailbox(t, a.Mnt, root)
		c.converge("setup")
		c.cut(0, 1)
		mkMailbox(t, a.Mnt, root+"/.F")
		deliverMsg(t, a.Mnt, root+"/.F", "new", "22000.M1.a", body("on a"), when)
		c.pushed(0, 2)
		if err := os.Rename(filepath.Join(n3.Mnt, root, ".F"), filepath.Join(n3.Mnt, root, ".F2")); err != nil {
			t.Fatal(err)
		}
		c.pushed(2, 1)
		waitForPath(t, filepath.Join(b.Mnt, root, ".F2", "cur"))
		deliverMsg(t, b.Mnt, root+"/.F2", "new", "22000.M2.b", body("into the renamed folder on b"), when)
		mkMailbox(t, b.Mnt, root+"/.F")
		deliverMsg(t, b.Mnt, root+"/.F", "new", "22000.M3.b", body("into b's own .F"), when)
		c.pushed(1, 2)
		st := c.converge("create at a path its rename left")
		if got := st.Mailboxes[root+"/.F2"]; len(got) != 3 || st.Mailboxes[root+"/.F"] != nil {
			t.Fatalf(".F2 holds %v, .F %v; want the three messages in .F2 (folders %v)", got,
				st.Mailboxes[root+"/.F"], keys(st.Mailboxes))
		}
		sameGUIDs(t, c)
	})

	// B and the third node create .Work concurrently (one folder, rule 3);
	// A deletes it having seen only B's create. The third node's create
	// survives the delete on every node, as on A and the third node, which
	// get it after the delete: B, which merged the two before, must not
	// take the folder with the delete.
	t.Run("folder created on two nodes, deleted by one that saw one create", func(t *testing.T) {
		c.t = t
		root := "r23/Maildir"
		mkMailbox(t, a.Mnt, root)
		c.converge("setup")
		c.partition()
		mkMailbox(t, b.Mnt, root+"/.Work")
		mkMailbox(t, n3.Mnt, root+"/.Work")
		want := mailboxGUIDs(t, n3.Store)[root+"/.Work"]
		c.heal(0, 1)
		c.pushed(1, 0)
		waitForPath(t, filepath.Join(a.Mnt, root, ".Work", "cur"))
		c.cut(0, 1)
		deleteMailboxDovecotStyle(t, a.Mnt, root+"/.Work")
		c.heal(1, 2)
		c.pushed(2, 1)
		c.cut(1, 2)
		c.healAll()
		c.converge("create unseen by the deleter")
		if got := mailboxGUIDs(t, b.Store)[root+"/.Work"]; got != want {
			t.Fatalf(".Work on B is %q; want the third node's folder %s", got, want)
		}
		sameGUIDs(t, c)
	})

	// B adds mail to .X and expunges it again; A deletes .X not having
	// seen the add. The third node gets B's add without its body (B no
	// longer had it when it sent it) and the expunge before A's delete:
	// it must keep .X, empty, as B (which had the mail) and A (which gets
	// the add after its delete) do (rule 4).
	t.Run("mail added and expunged, sent without its body, before a delete", func(t *testing.T) {
		c.t = t
		root := "r24/Maildir"
		mkMailbox(t, a.Mnt, root)
		mkMailbox(t, b.Mnt, root+"/.X")
		c.converge("setup")
		c.partition()
		deliverMsg(t, b.Mnt, root+"/.X", "new", "24000.M1.b", body("added and expunged"), when)
		if err := os.Remove(filepath.Join(b.Mnt, root, ".X", "new", "24000.M1.b")); err != nil {
			t.Fatal(err)
		}
		deleteMailboxDovecotStyle(t, a.Mnt, root+"/.X")
		c.heal(1, 2)
		c.pushed(1, 2)
		c.cut(1, 2)
		c.heal(0, 2)
		c.pushed(0, 2)
		st := c.converge("add and expunge sent without the body, then a delete")
		if _, ok := st.Mailboxes[root+"/.X"]; !ok {
			t.Fatalf(".X is gone; want it kept, empty, for the mail its deleter had not seen (folders %v)", keys(st.Mailboxes))
		}
		sameGUIDs(t, c)
	})

	// The third node moves B's message to .Archive; A flags it there and
	// B gets A's flag change before the move (the third node and B cut
	// off). The move must bring A's flag along on B, as on the nodes that
	// had the move first.
	t.Run("flag change in the target overtakes a move", func(t *testing.T) {
		c.t = t
		root := "r25/Maildir"
		mkMailbox(t, a.Mnt, root)
		mkMailbox(t, a.Mnt, root+"/.Archive")
		c.converge("setup")
		deliverMsg(t, b.Mnt, root, "cur", "25000.M1.b:2,S", body("moved, then flagged"), when)
		c.converge("setup mail")
		c.cut(1, 2)
		if err := os.Rename(filepath.Join(n3.Mnt, root, "cur", "25000.M1.b:2,S"),
			filepath.Join(n3.Mnt, root, ".Archive", "cur", "25000.M1.b:2,S")); err != nil {
			t.Fatal(err)
		}
		c.pushed(2, 0)
		setFlags(t, a.Mnt, root+"/.Archive", "25000.M1.b", "FS")
		c.pushed(0, 1)
		c.heal(1, 2)
		st := c.converge("flag change overtakes the move")
		if got := st.Mailboxes[root+"/.Archive"]; len(got) != 1 {
			t.Fatalf(".Archive holds %v; want the moved message", got)
		}
		if _, name := findMsg(t, b.Mnt, root+"/.Archive", "25000.M1.b"); name != "25000.M1.b:2,FS" {
			t.Fatalf("the moved message on B is %s; want it flagged", name)
		}
	})

	// A and B create .Work concurrently; B adds mail there, and the third
	// node expunges it. A gets the expunge first, naming B's folder, which
	// A does not know yet: when B's create merges the two on A, the
	// expunge must still hold, or B's add brings the message back on A.
	t.Run("expunge naming a folder before its merge", func(t *testing.T) {
		c.t = t
		root := "r26/Maildir"
		mkMailbox(t, a.Mnt, root)
		c.converge("setup")
		c.partition()
		// A's GUID must be the higher: A then keeps its own, and B's
		// becomes a name of it.
		mb := concurrentPairHigherOn(t, root+"/.Work", a, b)
		deliverMsg(t, b.Mnt, mb, "new", "26000.M1.b", body("expunged on the third node"), when)
		c.heal(1, 2)
		c.pushed(1, 2)
		c.cut(1, 2)
		if err := os.Remove(filepath.Join(n3.Mnt, mb, "new", "26000.M1.b")); err != nil {
			t.Fatal(err)
		}
		c.heal(0, 2)
		c.pushed(2, 0)
		c.healAll()
		st := c.converge("expunge before the merge")
		if got := st.Mailboxes[mb]; len(got) != 0 {
			t.Fatalf("%s holds %v; want the expunged message gone", mb, got)
		}
		sameGUIDs(t, c)
	})

	// B and the third node create .X concurrently; the third node merges
	// B's create (B's GUID the higher) and flags its own mail there under
	// the merged GUID, while B deletes .X not having seen the third node's
	// create. That create survives the delete (rule 3): on A and B, which
	// get it after the delete, the flag change naming B's deleted GUID must
	// reach the mail too.
	t.Run("flag change naming a merged folder whose other create was deleted", func(t *testing.T) {
		c.t = t
		root := "r27/Maildir"
		mkMailbox(t, a.Mnt, root)
		c.converge("setup")
		c.partition()
		mb := concurrentPairHigherOn(t, root+"/.X", b, n3)
		deliverMsg(t, n3.Mnt, mb, "cur", "27000.M1.c:2,S", body("flagged under the merged GUID"), when)
		c.healFrom(1, 2)
		c.pushed(1, 2)
		c.cut(1, 2)
		deleteMailboxDovecotStyle(t, b.Mnt, mb)
		setFlags(t, n3.Mnt, mb, "27000.M1.c", "FS")
		c.heal(0, 1)
		c.pushed(1, 0)
		c.healAll()
		c.converge("flag naming the merged GUID after the delete")
		for _, n := range c.nodes {
			if _, name := findMsg(t, n.Mnt, mb, "27000.M1.c"); name != "27000.M1.c:2,FS" {
				t.Fatalf("on %s the message is %s; want it flagged", n.Name, name)
			}
		}
		sameGUIDs(t, c)
	})

	// A and the third node create .W concurrently (the third node's GUID
	// the higher); A adds mail, merges the third node's create and expunges
	// the mail naming the merged GUID. B gets all of A's ops before the
	// third node's create: the expunge names a GUID B does not know yet.
	// When the create merges the two on B, the expunge must still win.
	t.Run("expunge naming the merged GUID before the merge", func(t *testing.T) {
		c.t = t
		root := "r28/Maildir"
		mkMailbox(t, a.Mnt, root)
		c.converge("setup")
		c.partition()
		mb := concurrentPairHigherOn(t, root+"/.W", n3, a)
		deliverMsg(t, a.Mnt, mb, "new", "28000.M1.a", body("expunged after the merge"), when)
		c.heal(0, 1)
		c.pushed(0, 1)
		c.cut(0, 1)
		c.healFrom(2, 0)
		c.pushed(2, 0)
		c.cut(0, 2)
		if err := os.Remove(filepath.Join(a.Mnt, mb, "new", "28000.M1.a")); err != nil {
			t.Fatal(err)
		}
		c.heal(0, 1)
		c.pushed(0, 1)
		c.healAll()
		st := c.converge("expunge naming the merged GUID first")
		if got := st.Mailboxes[mb]; len(got) != 0 {
			t.Fatalf("%s holds %v; want the expunged message gone", mb, got)
		}
		sameGUIDs(t, c)
	})

	// The third node adds a message and moves it to .W; A, not having seen
	// the move, changes its flags and expunges it. B gets A's flag change
	// and expunge before the message itself: the move must still bring it
	// to .W with A's flag change, as on the nodes that had the message
	// when A's change came.
	t.Run("flag change and expunge before the message, then its move", func(t *testing.T) {
		c.t = t
		root := "r29/Maildir"
		mkMailbox(t, a.Mnt, root)
		mkMailbox(t, a.Mnt, root+"/.W")
		c.converge("setup")
		c.partition()
		deliverMsg(t, n3.Mnt, root, "cur", "29000.M1.c:2,RS", body("flagged, expunged, moved"), when)
		c.healFrom(2, 0)
		c.pushed(2, 0)
		c.cut(0, 2)
		if err := os.Rename(filepath.Join(n3.Mnt, root, "cur", "29000.M1.c:2,RS"),
			filepath.Join(n3.Mnt, root, ".W", "cur", "29000.M1.c:2,RS")); err != nil {
			t.Fatal(err)
		}
		setFlags(t, a.Mnt, root, "29000.M1.c", "S")
		if err := os.Remove(filepath.Join(a.Mnt, root, "cur", "29000.M1.c:2,S")); err != nil {
			t.Fatal(err)
		}
		c.heal(0, 1)
		c.pushed(0, 1)
		c.cut(0, 1)
		c.healAll()
		c.converge("flags and expunge before the message, then the move")
		for _, n := range c.nodes {
			if _, name := findMsg(t, n.Mnt, root+"/.W", "29000.M1.c"); name != "29000.M1.c:2,S" {
				t.Fatalf("on %s the moved message is %s; want A's flag change on it", n.Name, name)
			}
		}
	})

	// The third node makes .F and renames it to .R1; A, having seen the
	// create but not the rename, renames it to .R2 later. B gets A's
	// rename first (it makes the folder for it), then the create and the
	// older rename: the newer rename must keep its path (rule 2).
	t.Run("newer rename before the create and the older rename", func(t *testing.T) {
		c.t = t
		root := "r30/Maildir"
		mkMailbox(t, a.Mnt, root)
		c.converge("setup")
		c.partition()
		mkMailbox(t, n3.Mnt, root+"/.F")
		c.healFrom(2, 0)
		c.pushed(2, 0)
		c.cut(0, 2)
		if err := os.Rename(filepath.Join(n3.Mnt, root, ".F"), filepath.Join(n3.Mnt, root, ".R1")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond) // A's rename is the newer
		if err := os.Rename(filepath.Join(a.Mnt, root, ".F"), filepath.Join(a.Mnt, root, ".R2")); err != nil {
			t.Fatal(err)
		}
		c.heal(0, 1)
		c.pushed(0, 1)
		c.healAll()
		st := c.converge("newer rename first")
		if _, ok := st.Mailboxes[root+"/.R2"]; !ok || st.Mailboxes[root+"/.R1"] != nil {
			t.Fatalf("folders %v; want the folder at .R2, the newer rename's path", keys(st.Mailboxes))
		}
		sameGUIDs(t, c)
	})

	// The third node adds mail to .X, A expunges it, and B deletes .X not
	// having seen the add. B gets A's expunge before the add: the add is
	// still mail B's delete had not seen, so .X stays on B too, empty, as
	// on the nodes that had the add when the delete came (rule 4).
	t.Run("expunge before the add it removes, into a deleted folder", func(t *testing.T) {
		c.t = t
		root := "r31/Maildir"
		mkMailbox(t, a.Mnt, root)
		mkMailbox(t, n3.Mnt, root+"/.X")
		c.converge("setup")
		c.partition()
		deliverMsg(t, n3.Mnt, root+"/.X", "new", "31000.M1.c", body("expunged before it arrives"), when)
		c.healFrom(2, 0)
		c.pushed(2, 0)
		c.cut(0, 2)
		if err := os.Remove(filepath.Join(a.Mnt, root, ".X", "new", "31000.M1.c")); err != nil {
			t.Fatal(err)
		}
		deleteMailboxDovecotStyle(t, b.Mnt, root+"/.X")
		c.heal(0, 1)
		c.pushed(0, 1)
		c.pushed(1, 0)
		st := c.converge("expunge before the add, folder deleted")
		if got, ok := st.Mailboxes[root+"/.X"]; !ok || len(got) != 0 {
			t.Fatalf(".X is %v (there: %v); want it kept, empty (folders %v)", got, ok, keys(st.Mailboxes))
		}
		sameGUIDs(t, c)
	})

	// B adds a message flagged \Deleted, the third node gets it and moves
	// it to .Archive, while B (not having seen the move) clears \Deleted.
	// A gets the move before the message: the move makes it in .Archive,
	// but only the flags the move changed date from it, so B's older
	// change to \Deleted still wins there, as everywhere else.
	t.Run("move arriving as an add does not date the flags it did not change", func(t *testing.T) {
		c.t = t
		root := "r32/Maildir"
		mkMailbox(t, a.Mnt, root)
		mkMailbox(t, a.Mnt, root+"/.Archive")
		c.converge("setup")
		c.partition()
		deliverMsg(t, b.Mnt, root, "cur", "32000.M1.b:2,T", body("undeleted, moved"), when)
		c.healFrom(1, 2)
		c.pushed(1, 2)
		c.cut(1, 2)
		setFlags(t, b.Mnt, root, "32000.M1.b", "RS")
		time.Sleep(5 * time.Millisecond) // the move is the newer op
		if err := os.Rename(filepath.Join(n3.Mnt, root, "cur", "32000.M1.b:2,T"),
			filepath.Join(n3.Mnt, root, ".Archive", "cur", "32000.M1.b:2,T")); err != nil {
			t.Fatal(err)
		}
		c.healFrom(2, 0)
		c.pushed(2, 0)
		c.healAll()
		c.converge("move before the message")
		for _, n := range c.nodes {
			if _, name := findMsg(t, n.Mnt, root+"/.Archive", "32000.M1.b"); name != "32000.M1.b:2,RS" {
				t.Fatalf("on %s the moved message is %s; want B's flag change on it", n.Name, name)
			}
		}
	})

	// B adds mail to .A and deletes .A; the third node deletes .A too, not
	// having seen B's mail, and A adds mail neither deleter had seen. The
	// third node gets B's mail (kept for its own delete, in the folder
	// recreated for it) and B's delete, which takes that mail and leaves
	// the recreated folder empty: it goes as part of .A's deletes, not as a
	// folder of its own, so A's mail arriving later recreates it under the
	// same GUID as on A.
	t.Run("second delete empties the folder recreated for the first", func(t *testing.T) {
		c.t = t
		root := "r33/Maildir"
		mkMailbox(t, a.Mnt, root)
		mkMailbox(t, b.Mnt, root+"/.A")
		c.converge("setup")
		c.partition()
		deliverMsg(t, b.Mnt, root+"/.A", "new", "33000.M1.b", body("seen by B's delete"), when)
		c.healFrom(1, 0)
		c.pushed(1, 0)
		c.cut(0, 1)
		deliverMsg(t, a.Mnt, root+"/.A", "new", "33000.M2.a", body("seen by neither delete"), when)
		deleteMailboxDovecotStyle(t, n3.Mnt, root+"/.A")
		deleteMailboxDovecotStyle(t, b.Mnt, root+"/.A")
		c.healFrom(1, 2)
		c.pushed(1, 2)
		c.cut(1, 2)
		st := c.converge("two deletes, the second emptying the recreated folder")
		if got := st.Mailboxes[root+"/.A"]; len(got) != 1 {
			t.Fatalf(".A holds %v; want A's mail only (folders %v)", got, keys(st.Mailboxes))
		}
		sameGUIDs(t, c)
	})

	// The third node renames .Work to .R7 and adds mail there; B deletes
	// .R7 having seen the rename but not the mail. A gets B's delete
	// before the rename: the mail B had not seen is kept where B had the
	// folder, .R7, on A too.
	t.Run("delete that had seen a rename not arrived yet", func(t *testing.T) {
		c.t = t
		root := "r34/Maildir"
		mkMailbox(t, a.Mnt, root)
		mkMailbox(t, a.Mnt, root+"/.Work")
		c.converge("setup")
		c.partition()
		if err := os.Rename(filepath.Join(n3.Mnt, root, ".Work"), filepath.Join(n3.Mnt, root, ".R7")); err != nil {
			t.Fatal(err)
		}
		c.healFrom(2, 1)
		c.pushed(2, 1)
		c.cut(1, 2)
		deliverMsg(t, n3.Mnt, root+"/.R7", "new", "34000.M1.c", body("unseen by the delete"), when)
		deleteMailboxDovecotStyle(t, b.Mnt, root+"/.R7")
		c.healFrom(1, 0)
		c.pushed(1, 0)
		c.healAll()
		st := c.converge("delete before the rename it had seen")
		if got := st.Mailboxes[root+"/.R7"]; len(got) != 1 || st.Mailboxes[root+"/.Work"] != nil {
			t.Fatalf(".R7 holds %v (folders %v); want the mail B had not seen kept there", got, keys(st.Mailboxes))
		}
		sameGUIDs(t, c)
	})
	// A deletes .A without C's new mail; C keeps that mail in the folder
	// recreated for it, then deletes that folder too, having seen it. B
	// gets C's ops first (the mail into .A, then the delete of a GUID B
	// does not have yet), A's delete last: A's delete makes that GUID on
	// B, and C's delete, recorded before, must then take it away.
	t.Run("delete of the folder kept for unseen mail before the delete that kept it", func(t *testing.T) {
		c.t = t
		root := "r36/Maildir"
		mkMailbox(t, a.Mnt, root)
		mkMailbox(t, b.Mnt, root+"/.A")
		c.converge("setup")
		c.partition()
		deliverMsg(t, n3.Mnt, root+"/.A", "new", "36000.M1.c", body("kept, then deleted"), when)
		deleteMailboxDovecotStyle(t, a.Mnt, root+"/.A")
		c.healFrom(0, 2)
		c.pushed(0, 2)
		c.cut(0, 2)
		waitForPath(t, filepath.Join(n3.Mnt, root, ".A", "new", "36000.M1.c"))
		deleteMailboxDovecotStyle(t, n3.Mnt, root+"/.A")
		c.healFrom(2, 1)
		c.pushed(2, 1)
		c.cut(1, 2)
		c.healFrom(0, 1)
		c.pushed(0, 1)
		st := c.converge("delete of the kept folder before the delete that kept it")
		if got, ok := st.Mailboxes[root+"/.A"]; ok {
			t.Fatalf(".A holds %v; want it gone (folders %v)", got, keys(st.Mailboxes))
		}
		sameGUIDs(t, c)
	})
	// A moves B's message into .Archive while B changes its flags and
	// deletes .Archive, and C deletes the source folder. r37: B gets C's
	// delete (the message goes there with its flags' stamps) before A's
	// move: the move brings it back into the folder kept for it, with B's
	// newer flag change, as on A, which had the move first and the flag
	// change later. r53: B's flag change reaches C before A's move does: C,
	// which deleted the source, has the message only as a record of its
	// deleted folder when the flag change comes; the move then takes its
	// flags from that record, which must have taken the change.
	for _, tc := range []struct{ name, root string }{
		{"move into a deleted folder after its source folder's delete, flags changed meanwhile", "r37"},
		{"move into a deleted folder, the flag change first on the source's deleter", "r53"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c.t = t
			root := tc.root + "/Maildir"
			key := strings.TrimPrefix(tc.root, "r") + "000.M1.b"
			mkMailbox(t, a.Mnt, root)
			mkMailbox(t, b.Mnt, root+"/.Work")
			mkMailbox(t, n3.Mnt, root+"/.Archive")
			deliverMsg(t, b.Mnt, root+"/.Work", "cur", key+":2,FS", body("moved, flags changed"), when)
			c.converge("setup")
			c.partition()
			if err := os.Rename(filepath.Join(a.Mnt, root, ".Work", "cur", key+":2,FS"),
				filepath.Join(a.Mnt, root, ".Archive", "cur", key+":2,FS")); err != nil {
				t.Fatal(err)
			}
			time.Sleep(5 * time.Millisecond)
			setFlags(t, b.Mnt, root+"/.Work", key, "RS")
			deleteMailboxDovecotStyle(t, b.Mnt, root+"/.Archive")
			deleteMailboxDovecotStyle(t, n3.Mnt, root+"/.Work")
			if tc.root == "r37" {
				c.healFrom(2, 1)
				c.pushed(2, 1)
				c.cut(1, 2)
				c.healFrom(0, 1)
				c.pushed(0, 1)
			} else {
				c.healFrom(1, 2)
				c.pushed(1, 2)
				c.healFrom(0, 2)
				c.pushed(0, 2)
			}
			st := c.converge("move into a deleted folder vs source delete and flag change")
			if m, ok := st.Mailboxes[root+"/.Archive"][key]; !ok || m.Flags != `\Answered \Seen` {
				t.Fatalf(".Archive holds %v; want the moved message, answered and seen (folders %v)", st.Mailboxes[root+"/.Archive"], keys(st.Mailboxes))
			}
			sameGUIDs(t, c)
		})
	}
	// A and B make .W concurrently; C merges the two (B's GUID is the
	// higher) and renames the folder to .R; B, having the rename but not
	// A's create, deletes it. On A and C the delete leaves A's create, at
	// .R; B gets A's create last and must put its folder at .R too.
	t.Run("create concurrent with a folder renamed and deleted before it arrives", func(t *testing.T) {
		c.t = t
		root := "r39/Maildir"
		mkMailbox(t, a.Mnt, root)
		c.converge("setup")
		c.partition()
		mb := concurrentPairHigherOn(t, root+"/.W", b, a)
		c.healFrom(0, 2)
		c.pushed(0, 2)
		c.healFrom(1, 2)
		c.pushed(1, 2)
		c.partition()
		waitForPath(t, filepath.Join(n3.Mnt, mb, "cur"))
		if err := os.Rename(filepath.Join(n3.Mnt, mb), filepath.Join(n3.Mnt, root, ".R")); err != nil {
			t.Fatal(err)
		}
		c.healFrom(2, 1)
		c.pushed(2, 1)
		c.partition()
		deleteMailboxDovecotStyle(t, b.Mnt, root+"/.R")
		st := c.converge("create vs merge, rename and delete")
		if _, ok := st.Mailboxes[root+"/.R"]; !ok || st.Mailboxes[mb] != nil {
			t.Fatalf("folders %v; want A's create kept at .R", keys(st.Mailboxes))
		}
		sameGUIDs(t, c)
	})
	// A and B make .S concurrently (B's GUID the higher); C merges the two
	// and deletes the folder, having seen both creates and A's mail. A gets
	// C's delete (naming B's GUID, unknown to A) before B's create: when
	// that create comes, A's folder is one with B's, and the delete, which
	// had seen both, takes it.
	t.Run("delete of a merged folder before the other create reaches its creator", func(t *testing.T) {
		c.t = t
		root := "r40/Maildir"
		mkMailbox(t, a.Mnt, root)
		c.converge("setup")
		c.partition()
		mb := concurrentPairHigherOn(t, root+"/.S", b, a)
		deliverMsg(t, a.Mnt, mb, "new", "40000.M1.a", body("seen by the deleter"), when)
		c.healFrom(0, 2)
		c.pushed(0, 2)
		c.healFrom(1, 2)
		c.pushed(1, 2)
		c.partition()
		waitForPath(t, filepath.Join(n3.Mnt, mb, "new", "40000.M1.a"))
		deleteMailboxDovecotStyle(t, n3.Mnt, mb)
		c.healFrom(2, 0)
		c.pushed(2, 0)
		st := c.converge("merged folder deleted before the other create arrives")
		if got, ok := st.Mailboxes[mb]; ok {
			t.Fatalf("%s holds %v; want it gone (folders %v)", mb, got, keys(st.Mailboxes))
		}
		sameGUIDs(t, c)
	})
	// C makes .X with mail; B renames it to .Y, and A gets that rename
	// before C's create (so A makes .Y for it) and deletes .Y. A's delete
	// had not seen C's create: B and C keep the folder under C's GUID (the
	// create the delete never saw), and A, when C's create comes, must
	// make it again under that GUID, where its delete had it.
	t.Run("create that a delete never saw, after a rename made its folder", func(t *testing.T) {
		c.t = t
		root := "r41/Maildir"
		mkMailbox(t, a.Mnt, root)
		c.converge("setup")
		c.partition()
		mkMailbox(t, n3.Mnt, root+"/.X")
		deliverMsg(t, n3.Mnt, root+"/.X", "new", "41000.M1.c", body("not seen by the deleter"), when)
		c.healFrom(2, 1)
		c.pushed(2, 1)
		c.partition()
		waitForPath(t, filepath.Join(b.Mnt, root, ".X", "cur"))
		if err := os.Rename(filepath.Join(b.Mnt, root, ".X"), filepath.Join(b.Mnt, root, ".Y")); err != nil {
			t.Fatal(err)
		}
		c.healFrom(1, 0)
		c.pushed(1, 0)
		c.partition()
		waitForPath(t, filepath.Join(a.Mnt, root, ".Y", "cur"))
		deliverMsg(t, a.Mnt, root+"/.Y", "cur", "41001.M2.a:2,S", body("seen by the deleter"), when)
		// C flags A's mail too, concurrently with A's delete: when that
		// flag change reaches A, the folder is there again, without it.
		c.healFrom(0, 2)
		c.pushed(0, 2)
		c.partition()
		waitForPath(t, filepath.Join(n3.Mnt, root, ".X", "cur", "41001.M2.a:2,S"))
		setFlags(t, n3.Mnt, root+"/.X", "41001.M2.a", "FS")
		deleteMailboxDovecotStyle(t, a.Mnt, root+"/.Y")
		st := c.converge("delete of a folder made by a rename before its create")
		if got := st.Mailboxes[root+"/.Y"]; len(got) != 1 || st.Mailboxes[root+"/.X"] != nil {
			t.Fatalf(".Y holds %v; want C's mail there (folders %v)", got, keys(st.Mailboxes))
		}
		sameGUIDs(t, c)
		// The deleter's own mail, gone with its delete, must not come
		// back in its index when the folder is made again: a flag change
		// to the kept mail still applies everywhere.
		setFlags(t, b.Mnt, root+"/.Y", "41000.M1.c", "FS")
		for _, n := range c.nodes {
			out, errs, code := runMailfs(t, "mailboxes", "--store", n.Store, "--json")
			if code != 0 {
				t.Fatalf("mailfs mailboxes on %s: exit %d: %s", n.Name, code, errs)
			}
			for _, l := range strings.Split(out, "\n") {
				if strings.Contains(l, `"`+root+`/.Y"`) && !strings.Contains(l, `"messages":1`) {
					t.Fatalf("%s lists %s; want 1 message", n.Name, l)
				}
			}
		}
		st = c.converge("flag change after the folder was made again")
		if m := st.Mailboxes[root+"/.Y"]["41000.M1.c"]; m.Flags != `\Flagged \Seen` {
			t.Fatalf(".Y holds %v; want C's mail flagged", st.Mailboxes[root+"/.Y"])
		}
	})
	// A and B make .S concurrently (B's GUID the higher, and the one
	// derived from A's higher still); C, having seen only A's create,
	// deletes it, while A adds mail C has not seen. A and B merge the two
	// creates under B's GUID before the delete comes. Every node must keep
	// the folder for that mail under one GUID: the higher of the create C
	// had not seen (B's) and the one derived from the GUID C deleted
	// (A's), as C itself gets when the mail and B's create reach it.
	t.Run("delete of one create of a merged folder keeps the other's and the deleted one's unseen mail", func(t *testing.T) {
		c.t = t
		root := "r42/Maildir"
		mkMailbox(t, a.Mnt, root)
		c.converge("setup")
		c.partition()
		mb := concurrentPairWhere(t, root+"/.S", a, b, "B's GUID above A's and the one derived from A's above both",
			func(ga, gb journal.GUID) bool { return above(gb, ga) && above(index.RecreatedGUID(ga), gb) })
		c.healFrom(0, 2)
		c.pushed(0, 2)
		c.partition()
		waitForPath(t, filepath.Join(n3.Mnt, mb, "cur"))
		deliverMsg(t, a.Mnt, mb, "new", "42000.M1.a", body("not seen by the deleter"), when)
		c.heal(0, 1)
		c.pushed(0, 1)
		c.pushed(1, 0)
		waitForPath(t, filepath.Join(b.Mnt, mb, "new", "42000.M1.a"))
		deleteMailboxDovecotStyle(t, n3.Mnt, mb)
		st := c.converge("delete of one create of a merged folder")
		if got := st.Mailboxes[mb]; len(got) != 1 {
			t.Fatalf("%s holds %v; want A's mail (folders %v)", mb, got, keys(st.Mailboxes))
		}
		sameGUIDs(t, c)
	})
	// A makes .S with mail; C, having A's create, adds mail; B gets only
	// C's mail (so it makes .S from that) and deletes the folder, never
	// having seen A's create. C adds more mail, which reaches B before A's
	// create does: B makes the folder again under the GUID derived from the
	// deleted one. A and C keep it under A's GUID (the create the delete
	// had not seen), and so must B once that create arrives.
	t.Run("create a delete never saw, after its unseen mail made the folder again", func(t *testing.T) {
		c.t = t
		root := "r43/Maildir"
		mkMailbox(t, a.Mnt, root)
		c.converge("setup")
		c.partition()
		mb := root + "/.S"
		mkMailbox(t, a.Mnt, mb)
		deliverMsg(t, a.Mnt, mb, "new", "43000.M1.a", body("on a, not seen by the deleter"), when)
		c.healFrom(0, 2)
		c.pushed(0, 2)
		c.partition()
		waitForPath(t, filepath.Join(n3.Mnt, mb, "new", "43000.M1.a"))
		deliverMsg(t, n3.Mnt, mb, "new", "43001.M1.c", body("seen by the deleter"), when)
		c.healFrom(2, 1)
		c.pushed(2, 1)
		c.partition()
		waitForPath(t, filepath.Join(b.Mnt, mb, "new", "43001.M1.c"))
		deleteMailboxDovecotStyle(t, b.Mnt, mb)
		deliverMsg(t, n3.Mnt, mb, "new", "43002.M2.c", body("on c, not seen by the deleter"), when)
		c.healFrom(2, 1)
		c.pushed(2, 1)
		waitForPath(t, filepath.Join(b.Mnt, mb, "new", "43002.M2.c"))
		st := c.converge("create a delete never saw, after its unseen mail")
		if got := st.Mailboxes[mb]; len(got) != 2 {
			t.Fatalf("%s holds %v; want the two messages the deleter had not seen (folders %v)", mb, got, keys(st.Mailboxes))
		}
		sameGUIDs(t, c)
	})

	// r45 with a third node that gets B's move out, then A's expunge, then
	// B's move back. On A (expunge, moves) and on B (moves, expunge) the
	// message is gone; on the third node the expunge finds only the first
	// move's trace in the folder and must leave it marked expunged, so the
	// move back meets it there too.
	t.Run("message moved out and back vs expunged, the third node between the moves", func(t *testing.T) {
		c.t = t
		root := "r46/Maildir"
		mkMailbox(t, a.Mnt, root)
		mkMailbox(t, a.Mnt, root+"/.X")
		deliverMsg(t, a.Mnt, root, "cur", "46000.M1.a:2,S", body("moved and expunged"), when)
		c.converge("setup")
		c.partition()
		if err := os.Rename(filepath.Join(b.Mnt, root, "cur", "46000.M1.a:2,S"), filepath.Join(b.Mnt, root, ".X", "cur", "46000.M1.a:2,S")); err != nil {
			t.Fatal(err)
		}
		c.healFrom(1, 2)
		c.pushed(1, 2)
		c.cut(1, 2)
		if err := os.Remove(filepath.Join(a.Mnt, root, "cur", "46000.M1.a:2,S")); err != nil {
			t.Fatal(err)
		}
		c.healFrom(0, 2)
		c.pushed(0, 2)
		c.cut(0, 2)
		if err := os.Rename(filepath.Join(b.Mnt, root, ".X", "cur", "46000.M1.a:2,S"), filepath.Join(b.Mnt, root, "cur", "46000.M1.a:2,S")); err != nil {
			t.Fatal(err)
		}
		st := c.converge("move out and back vs expunge, three nodes")
		for _, mb := range []string{root, root + "/.X"} {
			if m, ok := st.Mailboxes[mb]["46000.M1.a"]; ok {
				t.Fatalf("the expunged message is in %s: %+v", mb, m)
			}
		}
		sameGUIDs(t, c)
	})

	// B moves the message back after A's expunge reached it (the move is
	// made over the expunge and beats it); the third node gets both of B's
	// moves before A's expunge, which must not take the message moved back
	// over it.
	t.Run("message moved back over an expunge, the expunge last on the third node", func(t *testing.T) {
		c.t = t
		root := "r47/Maildir"
		mkMailbox(t, a.Mnt, root)
		mkMailbox(t, a.Mnt, root+"/.X")
		deliverMsg(t, a.Mnt, root, "cur", "47000.M1.a:2,S", body("moved back over an expunge"), when)
		c.converge("setup")
		c.partition()
		if err := os.Rename(filepath.Join(b.Mnt, root, "cur", "47000.M1.a:2,S"), filepath.Join(b.Mnt, root, ".X", "cur", "47000.M1.a:2,S")); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(filepath.Join(a.Mnt, root, "cur", "47000.M1.a:2,S")); err != nil {
			t.Fatal(err)
		}
		c.healFrom(0, 1)
		c.pushed(0, 1)
		c.cut(0, 1)
		if err := os.Rename(filepath.Join(b.Mnt, root, ".X", "cur", "47000.M1.a:2,S"), filepath.Join(b.Mnt, root, "cur", "47000.M1.a:2,S")); err != nil {
			t.Fatal(err)
		}
		c.healFrom(1, 2)
		c.pushed(1, 2)
		st := c.converge("move back over an expunge, three nodes")
		if _, ok := st.Mailboxes[root]["47000.M1.a"]; !ok || len(st.Mailboxes[root+"/.X"]) != 0 {
			t.Fatalf("%s holds %v, .X %v; want the message moved back", root, st.Mailboxes[root], st.Mailboxes[root+"/.X"])
		}
		sameGUIDs(t, c)
	})

	// B deletes C's folder .S, sees an unrelated change of A's, and makes
	// .S again; meanwhile C adds mail to its .S and renames it .R. On A the
	// mail comes after B's ops and is kept at .S, where it merges with B's
	// new .S, and C's rename moves both to .R. On C the rename came first:
	// B's create must join the folder kept at .R (B had seen neither the
	// mail nor the rename; A's change is beside the point).
	t.Run("create after a delete and an unrelated change, the kept folder renamed meanwhile", func(t *testing.T) {
		c.t = t
		root := "r48/Maildir"
		mkMailbox(t, a.Mnt, root)
		c.converge("setup")
		mkMailbox(t, n3.Mnt, root+"/.S")
		c.converge("C's folder")
		c.partition()
		deliverMsg(t, n3.Mnt, root+"/.S", "new", "48000.M1.c", body("not seen by the deleter"), when)
		if err := os.Rename(filepath.Join(n3.Mnt, root, ".S"), filepath.Join(n3.Mnt, root, ".R")); err != nil {
			t.Fatal(err)
		}
		deleteMailboxDovecotStyle(t, b.Mnt, root+"/.S")
		deliverMsg(t, a.Mnt, root, "new", "48001.M1.a", body("unrelated"), when)
		c.healFrom(0, 1)
		c.pushed(0, 1)
		c.cut(0, 1)
		mkMailbox(t, b.Mnt, root+"/.S")
		c.healFrom(1, 0)
		c.pushed(1, 0)
		c.healFrom(1, 2)
		c.pushed(1, 2)
		st := c.converge("create after a delete, kept folder renamed")
		if got := st.Mailboxes[root+"/.R"]; len(got) != 1 || st.Mailboxes[root+"/.S"] != nil {
			t.Fatalf(".R holds %v, .S %v; want C's mail in .R and no .S (folders %v)", got, st.Mailboxes[root+"/.S"], keys(st.Mailboxes))
		}
		sameGUIDs(t, c)
	})

	// B and A each make .F; B adds mail to its .F, which C, having seen
	// B's create but not the mail, deletes. C keeps the mail under the GUID
	// derived from B's (rule 4) and flags it; A's create, higher than both,
	// then absorbs that folder on C and B. On A, which merged the two
	// creates before the delete came, the delete keeps the folder as A's:
	// C's flag change, naming the derived GUID, must find it there too.
	t.Run("flags on mail kept from a delete, the kept folder merged into a higher create", func(t *testing.T) {
		c.t = t
		root := "r50/Maildir"
		mkMailbox(t, a.Mnt, root)
		c.converge("setup")
		c.partition()
		mb := concurrentPairWhere(t, root+"/.F", b, a, "A's create above B's and the GUID derived from it",
			func(gb, ga journal.GUID) bool {
				r := index.RecreatedGUID(gb)
				return string(ga[:]) > string(gb[:]) && string(ga[:]) > string(r[:])
			})
		c.healFrom(1, 2)
		c.pushed(1, 2)
		c.cut(1, 2)
		deliverMsg(t, b.Mnt, mb, "new", "50000.M1.b", body("not seen by the deleter"), when)
		deleteMailboxDovecotStyle(t, n3.Mnt, mb)
		c.healFrom(1, 2)
		c.pushed(1, 2)
		waitForPath(t, filepath.Join(n3.Mnt, mb, "new", "50000.M1.b"))
		setFlags(t, n3.Mnt, mb, "50000.M1.b", "RS")
		c.healFrom(1, 0)
		c.pushed(1, 0)
		c.healFrom(2, 0)
		c.pushed(2, 0)
		st := c.converge("flags on mail kept from a delete")
		if m, ok := st.Mailboxes[mb]["50000.M1.b"]; !ok || m.Flags != `\Answered \Seen` {
			t.Fatalf("%s holds %v; want 50000.M1.b answered and seen", mb, st.Mailboxes[mb])
		}
		sameGUIDs(t, c)
	})

	// B and A each make .F (B's GUID the higher, and the one derived from
	// it higher still); C, having B's create, adds mail to it and expunges
	// it again; B, having seen neither that nor A's create, deletes .F. On
	// A and B the mail comes after the delete and keeps .F under the GUID
	// derived from B's (rule 4), which the merge with A's takes. C, where
	// the mail was gone when the delete came, must keep it under that GUID
	// too, not A's.
	t.Run("delete of a merged folder whose unseen mail is expunged again before the delete comes", func(t *testing.T) {
		c.t = t
		root := "r55/Maildir"
		mkMailbox(t, a.Mnt, root)
		c.converge("setup")
		c.partition()
		mb := concurrentPairWhere(t, root+"/.F", b, a, "B's create above A's and the GUID derived from it above A's too",
			func(gb, ga journal.GUID) bool {
				r := index.RecreatedGUID(gb)
				return string(gb[:]) > string(ga[:]) && string(r[:]) > string(ga[:])
			})
		c.healFrom(1, 2)
		c.pushed(1, 2)
		c.cut(1, 2)
		deliverMsg(t, n3.Mnt, mb, "new", "55000.M1.c", body("expunged again"), when)
		if err := os.Remove(filepath.Join(n3.Mnt, mb, "new", "55000.M1.c")); err != nil {
			t.Fatal(err)
		}
		deleteMailboxDovecotStyle(t, b.Mnt, mb)
		c.healFrom(0, 2)
		c.pushed(0, 2)
		c.healFrom(1, 2)
		c.pushed(1, 2)
		st := c.converge("delete of a merged folder, its unseen mail expunged again")
		if got, ok := st.Mailboxes[mb]; !ok || len(got) != 0 {
			t.Fatalf("%s holds %v (there: %v); want it kept, empty", mb, got, ok)
		}
		sameGUIDs(t, c)
	})

	// C and B each make .W (C's GUID the higher, B's above the GUID derived
	// from C's); C merges B's create in and deletes .W, naming only its own
	// GUID; A, having only C's create, adds mail to it. On A the delete
	// keeps that mail under the derived GUID before B's create comes: the
	// create went with the delete (the deleter had seen it), so it must not
	// merge with the kept folder as a live one, or A keeps it under B's GUID
	// where B and C have the derived one.
	t.Run("a create a delete had seen arrives after the delete kept unseen mail at its path", func(t *testing.T) {
		c.t = t
		root := "r56/Maildir"
		mkMailbox(t, a.Mnt, root)
		c.converge("setup")
		c.partition()
		mb := concurrentPairWhere(t, root+"/.W", n3, b, "C's create above B's, B's above the GUID derived from C's",
			func(gc, gb journal.GUID) bool {
				r := index.RecreatedGUID(gc)
				return string(gc[:]) > string(gb[:]) && string(gb[:]) > string(r[:])
			})
		c.healFrom(1, 2)
		c.pushed(1, 2)
		c.cut(1, 2)
		c.healFrom(2, 0)
		c.pushed(2, 0)
		c.cut(2, 0)
		deliverMsg(t, a.Mnt, mb, "new", "56000.M1.a", body("not seen by the deleter"), when)
		deleteMailboxDovecotStyle(t, n3.Mnt, mb)
		c.healFrom(2, 0)
		c.pushed(2, 0)
		c.healFrom(1, 0)
		c.pushed(1, 0)
		st := c.converge("a create the delete had seen, after the delete")
		holdsOnly(t, st, mb, "56000.M1.a")
		sameGUIDs(t, c)
	})

	// A makes .Archive, adds mail to it and deletes it; C, having only the
	// create, adds mail to it and expunges it again before the delete
	// comes. The delete had not seen that add: on A the add comes after it
	// and makes the folder again (rule 4), and the expunge empties it. So
	// the folder stays, empty, on every node.
	t.Run("a folder deleted while another node added mail to it and expunged it again", func(t *testing.T) {
		c.t = t
		root := "r57/Maildir"
		mkMailbox(t, a.Mnt, root)
		c.converge("setup")
		c.partition()
		mb := root + "/.Archive"
		mkMailbox(t, a.Mnt, mb)
		c.healFrom(0, 2)
		c.pushed(0, 2)
		c.cut(0, 2)
		deliverMsg(t, a.Mnt, mb, "new", "57000.M1.a", body("seen by the deleter"), when)
		deleteMailboxDovecotStyle(t, a.Mnt, mb)
		deliverMsg(t, n3.Mnt, mb, "cur", "57001.M2.c:2,S", body("added and expunged again"), when)
		if err := os.Remove(filepath.Join(n3.Mnt, mb, "cur", "57001.M2.c:2,S")); err != nil {
			t.Fatal(err)
		}
		for _, order := range [][2]int{{0, 2}, {2, 0}, {2, 1}, {0, 1}} {
			c.healFrom(order[0], order[1])
			c.pushed(order[0], order[1])
		}
		st := c.converge("a folder deleted while mail was added to it and expunged again")
		if got, ok := st.Mailboxes[mb]; !ok || len(got) != 0 {
			t.Fatalf("%s holds %v (there: %v); want it kept, empty", mb, got, ok)
		}
		sameGUIDs(t, c)
	})

	// A makes .Work and deletes it; C, having only the create, adds mail
	// to it; B, having both, makes .Work anew. B's create reaches C first:
	// C sets its .Work aside (the delete B had seen is on its way). The
	// delete then keeps C's mail, which its deleter had not seen: on A and
	// B that mail comes after the delete and meets B's .Work at .Work (rule
	// 3), so on C the kept folder goes back there and merges with B's.
	t.Run("a folder set aside for a create keeps unseen mail from its delete", func(t *testing.T) {
		c.t = t
		root := "r58/Maildir"
		mkMailbox(t, a.Mnt, root)
		c.converge("setup")
		c.partition()
		mb := root + "/.Work"
		mkMailbox(t, a.Mnt, mb)
		c.healFrom(0, 2)
		c.pushed(0, 2)
		c.cut(0, 2)
		deleteMailboxDovecotStyle(t, a.Mnt, mb)
		c.healFrom(0, 1)
		c.pushed(0, 1)
		c.cut(0, 1)
		deliverMsg(t, n3.Mnt, mb, "new", "58000.M1.c", body("not seen by the deleter"), when)
		mkMailbox(t, b.Mnt, mb)
		c.healFrom(1, 2)
		c.pushed(1, 2)
		c.healFrom(0, 2)
		c.pushed(0, 2)
		st := c.converge("a folder set aside keeps unseen mail")
		holdsOnly(t, st, mb, "58000.M1.c")
		for p := range st.Mailboxes {
			if strings.HasPrefix(p, mb+"-") {
				t.Fatalf("%s is left set aside", p)
			}
		}
		sameGUIDs(t, c)
	})

	// A folder created on two nodes at once is one (rule 3), and A renames
	// it; the third node gets the creates and the rename in an order
	// neither creator saw. r59: A had merged B's create before its rename,
	// and the third node gets A's create and rename before B's create.
	// r60: A renamed its folder before it saw B's create, and the third
	// node gets B's create first. Either way the late create is the
	// renamed folder, not a new one at the old name; both GUID orders.
	for _, tc := range []struct {
		id, what     string
		beforeRename func()
		afterRename  func()
	}{
		{"r59", "a merged folder's rename reaches the third node before the other create",
			func() { c.healFrom(1, 0); c.pushed(1, 0); c.cut(0, 1) },
			func() { c.healFrom(0, 2); c.pushed(0, 2) }},
		{"r60", "a create concurrent with another create of its name that was renamed since",
			func() {},
			func() { c.healFrom(1, 2); c.pushed(1, 2) }},
	} {
		for _, higher := range []int{0, 1} {
			t.Run(fmt.Sprintf("%s (higher GUID on node %d)", tc.what, higher), func(t *testing.T) {
				c.t = t
				root := fmt.Sprintf("%s-%d/Maildir", tc.id, higher)
				mkMailbox(t, a.Mnt, root)
				c.converge("setup")
				c.partition()
				high, low := a, b
				if higher == 1 {
					high, low = b, a
				}
				mb := concurrentPairHigherOn(t, root+"/.X", high, low)
				deliverMsg(t, a.Mnt, mb, "new", "59000.M1.a", body("made on a"), when)
				deliverMsg(t, b.Mnt, mb, "new", "59001.M1.b", body("made on b"), when)
				tc.beforeRename()
				renamed := root + "/.Y"
				if err := os.Rename(filepath.Join(a.Mnt, mb), filepath.Join(a.Mnt, renamed)); err != nil {
					t.Fatal(err)
				}
				tc.afterRename()
				c.healAll()
				st := c.converge(tc.what)
				got := st.Mailboxes[renamed]
				if _, ok := got["59000.M1.a"]; !ok || len(got) != 2 {
					t.Fatalf("%s holds %v; want 59000.M1.a and 59001.M1.b (one folder)", renamed, got)
				}
				if st.Mailboxes[mb] != nil {
					t.Fatalf("%s is still there: %v", mb, st.Mailboxes[mb])
				}
				sameGUIDs(t, c)
			})
		}
	}

	// A makes .S, renames it to .R, makes .S again and deletes .R; B made
	// .S meanwhile, with mail, and C got it first. B's create is one folder
	// with both of A's (rule 3: neither saw the other), so on B and C all
	// three are one record when A's delete comes. That delete ends A's first
	// create only: A's second one, which it had seen, is live on A, and the
	// folder keeps its GUID when it is the higher (A merged B's create into
	// it), not B's (the survivor of the creates A had not seen).
	t.Run("a delete of one of a node's creates merged with another's through a third create", func(t *testing.T) {
		c.t = t
		root := "r61/Maildir"
		mkMailbox(t, a.Mnt, root)
		c.converge("setup")
		c.partition()
		var mb, renamed string
		for i := 0; ; i++ {
			if i == 40 {
				t.Fatal("40 tries, no pair of creates where A's second GUID is above B's")
			}
			mb, renamed = fmt.Sprintf("%s/.S%d", root, i), fmt.Sprintf("%s/.R%d", root, i)
			mkMailbox(t, a.Mnt, mb)
			if err := os.Rename(filepath.Join(a.Mnt, mb), filepath.Join(a.Mnt, renamed)); err != nil {
				t.Fatal(err)
			}
			mkMailbox(t, a.Mnt, mb)
			mkMailbox(t, b.Mnt, mb)
			if mailboxGUIDs(t, a.Store)[mb] > mailboxGUIDs(t, b.Store)[mb] {
				break
			}
		}
		deliverMsg(t, b.Mnt, mb, "new", "61000.M1.b", body("made on b"), when)
		c.healFrom(1, 2)
		c.pushed(1, 2)
		deliverMsg(t, n3.Mnt, mb, "new", "61001.M1.c", body("made on c"), when)
		deleteMailboxDovecotStyle(t, a.Mnt, renamed)
		c.healAll()
		st := c.converge("a delete of one create of three merged")
		found := 0
		for _, msgs := range st.Mailboxes {
			for k := range msgs {
				if k == "61000.M1.b" || k == "61001.M1.c" {
					found++
				}
			}
		}
		if found != 2 {
			t.Fatalf("%d of the 2 messages the delete had not seen are left: %v", found, st.Mailboxes)
		}
		sameGUIDs(t, c)
	})

	// C makes .Sent and deletes it; A, which had C's create, adds mail to
	// it; B makes .Sent too and deletes it. On C the mail comes first and
	// makes the folder again under the GUID derived from C's; B's delete,
	// which had not seen the mail either, comes to that folder later. The
	// nodes where B's delete came first kept the mail under the GUID
	// derived from C's too: B's delete must not derive another from it.
	for _, order := range []string{"B's ops before C's delete", "B's ops after C's delete"} {
		t.Run("two deletes of one folder keeping mail neither had seen, the second on the recreated folder ("+order+")", func(t *testing.T) {
			c.t = t
			root := "r62-" + strings.Fields(order)[2] + "/Maildir"
			mkMailbox(t, a.Mnt, root)
			c.converge("setup")
			c.partition()
			mb := root + "/.Sent"
			mkMailbox(t, n3.Mnt, mb)
			c.healFrom(2, 0)
			c.pushed(2, 0)
			c.cut(2, 0)
			mkMailbox(t, b.Mnt, mb)
			deleteMailboxDovecotStyle(t, b.Mnt, mb)
			deliverMsg(t, a.Mnt, mb, "new", "62000.M1.a", body("not seen by either deleter"), when)
			if order == "B's ops before C's delete" {
				c.healFrom(1, 2)
				c.pushed(1, 2)
				c.cut(1, 2) // B's create and delete come before C's own delete
			}
			deleteMailboxDovecotStyle(t, n3.Mnt, mb)
			c.healFrom(0, 2)
			c.pushed(0, 2)
			c.healAll()
			st := c.converge("two deletes keeping unseen mail")
			holdsOnly(t, st, mb, "62000.M1.a")
			sameGUIDs(t, c)
		})
	}

	// A deletes .Sent without B's new mail, gets that mail (the folder is
	// made again for it, under the GUID derived from the deleted one's)
	// and deletes that folder too, without B's next mail: that mail keeps
	// the folder under the GUID derived from the made-again one's, on B as
	// on A (s113 of a folder-heavy probe: B kept it under the first).
	t.Run("a delete of the folder made again for mail another delete had not seen", func(t *testing.T) {
		c.t = t
		root := "r65/Maildir"
		mb := root + "/.Sent"
		mkMailbox(t, b.Mnt, root)
		mkMailbox(t, b.Mnt, mb)
		deliverMsg(t, b.Mnt, mb, "cur", "65000.M1.b", body("seen by both deletes"), when)
		c.converge("setup")
		c.partition()
		deleteMailboxDovecotStyle(t, a.Mnt, mb)
		deliverMsg(t, b.Mnt, mb, "new", "65001.M1.b", body("seen by the second delete"), when)
		c.healFrom(1, 0)
		c.pushed(1, 0)
		c.cut(0, 1)
		waitForPath(t, filepath.Join(a.Mnt, mb, "new", "65001.M1.b")) // the folder made again on A
		deliverMsg(t, b.Mnt, mb, "new", "65002.M1.b", body("seen by neither delete"), when)
		deleteMailboxDovecotStyle(t, a.Mnt, mb)
		c.healAll()
		st := c.converge("a delete of the folder made again")
		holdsOnly(t, st, mb, "65002.M1.b")
		sameGUIDs(t, c)
	})

	// C deletes .Archive; A adds mail to it, gets C's delete (the folder is
	// kept for that mail, under the GUID derived from the deleted one's)
	// and adds more, naming that GUID; B, which had seen neither, renames
	// the folder. On B, A's later mail makes the derived GUID's folder at
	// the old name before C's delete arrives: the two are one, at the new
	// name (where the rename took the kept folder on A and C) and under
	// the derived GUID (s78 of a folder-heavy probe kept B's at the old
	// name under the deleted GUID).
	t.Run("a kept folder's GUID made elsewhere first, the deleted folder renamed meanwhile", func(t *testing.T) {
		c.t = t
		root := "r66/Maildir"
		mb, renamed := root+"/.Archive", root+"/.Archive.2024"
		mkMailbox(t, n3.Mnt, root)
		mkMailbox(t, n3.Mnt, mb)
		c.converge("setup")
		c.partition()
		deleteMailboxDovecotStyle(t, n3.Mnt, mb)
		deliverMsg(t, a.Mnt, mb, "new", "66000.M1.a", body("not seen by the delete"), when)
		c.healFrom(2, 0)
		c.pushed(2, 0)
		c.cut(2, 0)
		deliverMsg(t, a.Mnt, mb, "new", "66001.M1.a", body("into the kept folder"), when)
		if err := os.Rename(filepath.Join(b.Mnt, mb), filepath.Join(b.Mnt, renamed)); err != nil {
			t.Fatal(err)
		}
		c.healFrom(0, 1)
		c.pushed(0, 1) // A's mail reaches B before C's delete
		c.cut(0, 1)
		c.healAll()
		st := c.converge("kept folder's GUID in use, deleted folder renamed")
		if got, ok := st.Mailboxes[mb]; ok {
			t.Fatalf("%s is there (holding %v); want the kept mail under %s only", mb, got, renamed)
		}
		for _, k := range []string{"66000.M1.a", "66001.M1.a"} {
			if _, ok := st.Mailboxes[renamed][k]; !ok {
				t.Fatalf("%s holds %v; want %s", renamed, st.Mailboxes[renamed], k)
			}
		}
		sameGUIDs(t, c)
	})

	// C delivers a message and moves it to .Archive; B, having both, moves
	// it back (or on to .Work). B's move reaches A first (A has neither of
	// C's ops): the message comes to A as an add where B put it; C's move,
	// arriving later, is over (B had seen it) and must not take it to
	// .Archive again, nor leave C's add's copy behind (s14 of a
	// folder-heavy probe).
	for _, onTo := range []string{"", "/.Work"} {
		label := "back"
		if onTo != "" {
			label = "on to " + onTo[1:]
		}
		t.Run("a move that overtakes the move before it ("+label+")", func(t *testing.T) {
			c.t = t
			root := "r68" + strings.ReplaceAll(onTo, "/.", "-") + "/Maildir"
			mkMailbox(t, n3.Mnt, root)
			mkMailbox(t, n3.Mnt, root+"/.Archive")
			mkMailbox(t, n3.Mnt, root+"/.Work")
			c.converge("setup")
			c.partition()
			const name = "68000.M1.c:2,S"
			deliverMsg(t, n3.Mnt, root, "cur", name, body("moved there and on"), when)
			if err := os.Rename(filepath.Join(n3.Mnt, root, "cur", name), filepath.Join(n3.Mnt, root, ".Archive", "cur", name)); err != nil {
				t.Fatal(err)
			}
			c.healFrom(2, 1)
			c.pushed(2, 1)
			c.cut(2, 1)
			if err := os.Rename(filepath.Join(b.Mnt, root, ".Archive", "cur", name), filepath.Join(b.Mnt, root+onTo, "cur", name)); err != nil {
				t.Fatal(err)
			}
			c.healFrom(1, 0)
			c.pushed(1, 0) // B's move reaches A before C's add and move
			c.cut(1, 0)
			c.healAll()
			st := c.converge("a later move first")
			for _, mb := range []string{root, root + "/.Archive", root + "/.Work"} {
				_, there := st.Mailboxes[mb]["68000.M1.c"]
				if want := mb == root+onTo; there != want || len(st.Mailboxes[mb]) > 1 {
					t.Fatalf("%s holds %v; want 68000.M1.c there: %v", mb, st.Mailboxes[mb], want)
				}
			}
		})
	}

	// A makes .Archive.2024 and renames it; C, having only the create,
	// deletes it and makes the name again; B makes the name too, without
	// either. Where the rename came before B's create, B's (one with A's by
	// rule 3) follows it, and C's merges with B's there. On B, C's create
	// merges with B's first and A's create and rename come last: the rename
	// must take the folder B's create made along (s6 of a folder-heavy
	// probe left it at the old name on B).
	t.Run("a rename of a deleted folder reaching the folder made concurrently at its name", func(t *testing.T) {
		c.t = t
		root := "r69/Maildir"
		mb, renamed := root+"/.Archive.2024", root+"/.Sent"
		mkMailbox(t, a.Mnt, root)
		c.converge("setup")
		c.partition()
		mkMailbox(t, a.Mnt, mb)
		c.healFrom(0, 2)
		c.pushed(0, 2)
		c.cut(0, 2)
		if err := os.Rename(filepath.Join(a.Mnt, mb), filepath.Join(a.Mnt, renamed)); err != nil {
			t.Fatal(err)
		}
		deleteMailboxDovecotStyle(t, n3.Mnt, mb)
		mkMailbox(t, n3.Mnt, mb)
		mkMailbox(t, b.Mnt, mb)
		c.healFrom(2, 1)
		c.pushed(2, 1) // C's delete and create reach B first
		c.cut(2, 1)
		c.healFrom(0, 1)
		c.pushed(0, 1)
		c.cut(0, 1)
		c.healAll()
		st := c.converge("a rename of a deleted folder, last")
		if _, ok := st.Mailboxes[mb]; ok {
			t.Fatalf("%s is there; want the folder at %s", mb, renamed)
		}
		if _, ok := st.Mailboxes[renamed]; !ok {
			t.Fatalf("%s is not there", renamed)
		}
		sameGUIDs(t, c)
	})

	// A makes .Archive; C makes it too (B gets both: one mailbox), adds
	// mail B does not see and deletes the folder; B deletes it too. On A,
	// C's ops come first: C's delete keeps the folder for A's create it had
	// not seen; then B's delete, which had not seen C's mail, finds that
	// mail gone, taken by C's delete of the folder. On B that mail arrives
	// after B's delete and makes the folder again, and C's delete, coming
	// with it, takes it: the folder goes on A as well (s20 of a folder-heavy
	// probe kept it on A, empty).
	t.Run("a delete that had not seen mail another delete of the folder took", func(t *testing.T) {
		c.t = t
		root := "r64/Maildir"
		mkMailbox(t, a.Mnt, root)
		c.converge("setup")
		c.partition()
		mb := root + "/.Archive"
		mkMailbox(t, a.Mnt, mb)
		c.healFrom(0, 1)
		c.pushed(0, 1)
		c.cut(0, 1)
		mkMailbox(t, n3.Mnt, mb)
		c.healFrom(2, 1)
		c.pushed(2, 1)
		c.cut(2, 1)
		deliverMsg(t, n3.Mnt, mb, "new", "64000.M1.c", body("taken by c's delete of the folder"), when)
		deleteMailboxDovecotStyle(t, n3.Mnt, mb)
		deleteMailboxDovecotStyle(t, b.Mnt, mb)
		c.healFrom(2, 0)
		c.pushed(2, 0) // C's create, mail and delete reach A first
		c.healFrom(1, 0)
		c.pushed(1, 0)
		c.healAll()
		st := c.converge("two deletes, one of them had not seen the mail the other took")
		if got, ok := st.Mailboxes[mb]; ok {
			t.Fatalf("%s is still there (holding %v); want it deleted", mb, got)
		}
		sameGUIDs(t, c)
	})

	// B flags a message while A, not having seen it, sets other flags on it
	// and moves it to another folder: B's flag survives the move (rule 6,
	// flag by flag) on every node, A's included.
	t.Run("a flag change concurrent with another flag change and a move", func(t *testing.T) {
		c.t = t
		root := "r63/Maildir"
		mkMailbox(t, a.Mnt, root)
		mkMailbox(t, n3.Mnt, root+"/.Work")
		c.converge("setup")
		deliverMsg(t, b.Mnt, root, "cur", "63000.M1.b", body("flagged on b, moved on a"), when)
		c.converge("message there")
		c.partition()
		setFlags(t, b.Mnt, root, "63000.M1.b", "F")
		setFlags(t, a.Mnt, root, "63000.M1.b", "DS")
		if err := os.Rename(filepath.Join(a.Mnt, root, "cur", "63000.M1.b:2,DS"),
			filepath.Join(a.Mnt, root, ".Work", "cur", "63000.M1.b:2,DS")); err != nil {
			t.Fatal(err)
		}
		c.healAll()
		st := c.converge("flag change vs flag change and move")
		if got := st.Mailboxes[root+"/.Work"]["63000.M1.b"]; got.Flags != `\Draft \Flagged \Seen` {
			t.Fatalf("63000.M1.b in .Work: %+v; want flags \\Draft \\Flagged \\Seen", got)
		}
	})
}

// concurrentPairWhere makes folders base0, base1, … on x and on y, each
// on its own, until the GUIDs of one pair satisfy want; it returns that
// pair's path (the others replicate like any folder).
func concurrentPairWhere(t *testing.T, base string, x, y *node, what string, want func(gx, gy journal.GUID) bool) string {
	t.Helper()
	guid := func(n *node, mb string) journal.GUID {
		s := mailboxGUIDs(t, n.Store)[mb]
		raw, err := hex.DecodeString(s)
		if err != nil || len(raw) != 16 {
			t.Fatalf("GUID of %s on %s: %q, %v", mb, n.Name, s, err)
		}
		return journal.GUID(raw)
	}
	for i := 0; i < 60; i++ {
		mb := fmt.Sprintf("%s%d", base, i)
		mkMailbox(t, x.Mnt, mb)
		mkMailbox(t, y.Mnt, mb)
		if want(guid(x, mb), guid(y, mb)) {
			return mb
		}
	}
	t.Fatalf("60 folder pairs, none with %s", what)
	return ""
}

// above reports whether GUID g sorts after h (rule 3 keeps the higher).
func above(g, h journal.GUID) bool { return string(g[:]) > string(h[:]) }

func concurrentPairHigherOn(t *testing.T, base string, high, low *node) string {
	t.Helper()
	for i := 0; i < 20; i++ {
		mb := fmt.Sprintf("%s%d", base, i)
		mkMailbox(t, high.Mnt, mb)
		mkMailbox(t, low.Mnt, mb)
		if mailboxGUIDs(t, high.Store)[mb] > mailboxGUIDs(t, low.Store)[mb] {
			return mb
		}
	}
	t.Fatalf("20 folder pairs, none where %s's GUID is the higher", high.Name)
	return ""
}

// holdsOnly fails t unless mailbox mb holds message key and nothing else.
func holdsOnly(t *testing.T, st treeState, mb, key string) {
	t.Helper()
	if _, ok := st.Mailboxes[mb][key]; !ok || len(st.Mailboxes[mb]) != 1 {
		t.Fatalf("%s holds %v; want only %s", mb, st.Mailboxes[mb], key)
	}
}

// waitForPath waits until p exists (replication is asynchronous).
func waitForPath(t *testing.T, p string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(p); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not appear within 20s", p)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
