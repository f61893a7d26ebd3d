package tests

import (
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestReplicateTwoMounts runs two nodes in two processes on loopback,
// paired with invite/join, and checks that every kind of change made on
// one mount arrives on the other (issue 3, first acceptance line).
func TestReplicateTwoMounts(t *testing.T) {
	t.Parallel()
	nodes := startNodes(t, 2)
	a, b := nodes[0], nodes[1]
	inbox := "example.com/alice/Maildir"

	// 1000 deliveries on A: new and cur, system flags and keywords, sizes
	// from a few bytes to 300 KiB, original mtimes.
	// The mailbox first, so B can give keywords letters of its own before
	// A's messages use them: flags travel by name.
	mkMailbox(t, a.Mnt, inbox)
	writeKeywords(t, a.Mnt, inbox, "$Important", "Work")
	checkConverged(t, "mailbox created on A", a, b)
	writeKeywords(t, b.Mnt, inbox, "Later", "Work", "$Important")
	rng := rand.New(rand.NewSource(1))
	base := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	letters := []string{"", "S", "RS", "FS", "aS", "bF", "ab"}
	for i := 0; i < 1000; i++ {
		size := 200 + rng.Intn(4000)
		if i%100 == 0 {
			size = 300 << 10
		}
		body := []byte(fmt.Sprintf("From: x%d@example.org\r\nSubject: message %d\r\n\r\n%s\r\n", i, i,
			strings.Repeat(fmt.Sprintf("line %d ", i), size/10)))
		key := fmt.Sprintf("%d.M%dP1.alpha", 1700000000+i, i)
		if i%3 == 0 {
			deliverMsg(t, a.Mnt, inbox, "new", key, body, base.Add(time.Duration(i)*time.Minute))
		} else {
			deliverMsg(t, a.Mnt, inbox, "cur", key+":2,"+letters[i%len(letters)], body, base.Add(time.Duration(i)*time.Minute))
		}
	}
	st := checkConverged(t, "1000 deliveries on A", a, b)
	if n := len(st.Mailboxes[inbox]); n != 1000 {
		t.Fatalf("B has %d messages, want 1000", n)
	}
	// B's journal holds none of A's changes (echo suppression).
	if ops := journalOps(t, b.Store); len(ops) != 0 {
		t.Fatalf("B journaled %d ops while only applying A's (first: %+v)", len(ops), ops[0])
	}

	if m := st.Mailboxes[inbox]["1700000004.M4P1.alpha"]; m.Flags != `$Important \Seen` {
		t.Fatalf("keyword flags on B: %+v", m)
	}
	if _, name := findMsg(t, b.Mnt, inbox, "1700000004.M4P1.alpha"); !strings.HasSuffix(name, ":2,Sc") {
		t.Fatalf("B names $Important by its own letter c: %s", name)
	}

	// Flag changes on B reach A, with a keyword A has no letter for yet.
	for i := 0; i < 1000; i += 20 {
		key := fmt.Sprintf("%d.M%dP1.alpha", 1700000000+i, i)
		setFlags(t, b.Mnt, inbox, key, "Sa") // \Seen and Later (a on B)
	}
	st = checkConverged(t, "flag changes on B", a, b)
	if m := st.Mailboxes[inbox]["1700000020.M20P1.alpha"]; m.Flags != `Later \Seen` || m.Sub != "cur" {
		t.Fatalf("flags on A after B's change: %+v", m)
	}

	// Folders: create on B, deliver there, subscribe; copy (hard link)
	// and move on A; expunge on both.
	mkMailbox(t, b.Mnt, inbox+"/.Archive")
	writeSubscriptions(t, b.Mnt, inbox, "INBOX", "Archive")
	deliverMsg(t, b.Mnt, inbox+"/.Archive", "cur", "1800000000.M1P2.beta:2,S", []byte("Subject: archived\r\n\r\nx\r\n"), base)
	checkConverged(t, "folder create, delivery and subscribe on B", a, b)

	_, name := findMsg(t, a.Mnt, inbox, "1700000001.M1P1.alpha")
	tmp := filepath.Join(a.Mnt, inbox, ".Archive", "tmp", "copy1")
	if err := os.Link(filepath.Join(a.Mnt, inbox, "cur", name), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(a.Mnt, inbox, ".Archive", "cur", "1800000001.M2P1.alpha:2,S")); err != nil {
		t.Fatal(err)
	}
	_, name = findMsg(t, a.Mnt, inbox, "1700000002.M2P1.alpha")
	if err := os.Rename(filepath.Join(a.Mnt, inbox, "cur", name), filepath.Join(a.Mnt, inbox, ".Archive", "cur", name)); err != nil {
		t.Fatal(err)
	}
	_, name = findMsg(t, a.Mnt, inbox, "1700000004.M4P1.alpha")
	if err := os.Remove(filepath.Join(a.Mnt, inbox, "cur", name)); err != nil {
		t.Fatal(err)
	}
	sub, name := findMsg(t, b.Mnt, inbox, "1700000005.M5P1.alpha")
	if err := os.Remove(filepath.Join(b.Mnt, inbox, sub, name)); err != nil {
		t.Fatal(err)
	}
	st = checkConverged(t, "copy, move and expunges", a, b)
	if _, ok := st.Mailboxes[inbox+"/.Archive"]["1700000002.M2P1.alpha"]; !ok {
		t.Fatalf("moved message not in Archive")
	}
	for _, k := range []string{"1700000002.M2P1.alpha", "1700000004.M4P1.alpha", "1700000005.M5P1.alpha"} {
		if _, ok := st.Mailboxes[inbox][k]; ok {
			t.Fatalf("%s still in INBOX", k)
		}
	}

	// Folder rename on A, unsubscribe on A, folder delete on B.
	mkMailbox(t, a.Mnt, inbox+"/.Drafts")
	deliverMsg(t, a.Mnt, inbox+"/.Drafts", "cur", "1800000002.M3P1.alpha:2,D", []byte("Subject: draft\r\n\r\n"), base)
	checkConverged(t, "second folder", a, b)
	if err := os.Rename(filepath.Join(a.Mnt, inbox, ".Archive"), filepath.Join(a.Mnt, inbox, ".Old")); err != nil {
		t.Fatal(err)
	}
	writeSubscriptions(t, a.Mnt, inbox, "INBOX")
	st = checkConverged(t, "folder rename and unsubscribe on A", a, b)
	if _, ok := st.Mailboxes[inbox+"/.Old"]; !ok || len(st.Mailboxes[inbox+"/.Old"]) != 3 {
		t.Fatalf("renamed folder: %v", st.Mailboxes[inbox+"/.Old"])
	}
	if st.Subs[inbox+"/subscriptions"] != "INBOX" {
		t.Fatalf("subscriptions after unsubscribe: %q", st.Subs[inbox+"/subscriptions"])
	}
	deleteMailboxDovecotStyle(t, b.Mnt, inbox+"/.Drafts")
	st = checkConverged(t, "folder delete on B", a, b)
	if _, ok := st.Mailboxes[inbox+"/.Drafts"]; ok {
		t.Fatalf("deleted folder still there")
	}
	for _, n := range nodes {
		if strings.Contains(n.Log(), "level=ERROR") {
			t.Errorf("%s logged errors:\n%s", n.Name, n.Log())
		}
	}
}

// TestSyncTimeout checks mount --sync-timeout: a delivery returns once the
// peer has it, and, with the peer down, after the timeout (the delivery is
// durable locally and replicates later).
func TestSyncTimeout(t *testing.T) {
	t.Parallel()
	var nodes []*node
	for i, extra := range [][]string{{"--sync-timeout", "3s"}, nil} {
		store, mnt := newStoreDirs(t)
		name := fmt.Sprintf("node%c", 'a'+i)
		addr := freeAddr(t)
		initNode(t, store, name)
		p := startMailfs(t, store, mnt, append([]string{"--listen", addr}, extra...)...)
		nodes = append(nodes, &node{mailfsProc: p, Name: name, Addr: addr, ID: nodeID(t, statusJSON(t, store))})
	}
	a, b := nodes[0], nodes[1]
	pairNodes(t, a, b)
	waitConnected(t, a.Name, a.Store, b.ID, b.Name, b.Addr)
	mb := "u/Maildir"
	mkMailbox(t, a.Mnt, mb)
	syncAll(t, a)
	when := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	for i := 0; i < 20; i++ {
		key := fmt.Sprintf("1900000%03d.M1.a", i)
		deliverMsg(t, a.Mnt, mb, "new", key, []byte("Subject: wait\r\n\r\n"+key+"\r\n"), when)
		// No sync: the delivery returned only once B had made it durable.
		if _, err := os.Stat(filepath.Join(b.Store, "maildir", mb, "new", key)); err != nil {
			t.Fatalf("delivery %d returned before the peer had it: %v", i, err)
		}
	}
	b.Stop()
	start := time.Now()
	deliverMsg(t, a.Mnt, mb, "new", "1900000999.M1.a", []byte("Subject: peer down\r\n\r\n"), when)
	if took := time.Since(start); took < 3*time.Second || took > 10*time.Second {
		t.Fatalf("delivery with the peer down took %v, want the 3s --sync-timeout", took)
	}
}
