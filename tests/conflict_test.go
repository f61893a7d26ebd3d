package tests

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// mailboxGUIDs returns path → GUID from `mailfs mailboxes --json`.
func mailboxGUIDs(t *testing.T, store string) map[string]string {
	t.Helper()
	out, errs, code := runMailfs(t, "mailboxes", "--store", store, "--json")
	if code != 0 {
		t.Fatalf("mailfs mailboxes: exit %d: %s", code, errs)
	}
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var l struct {
			GUID string `json:"guid"`
			Path string `json:"path"`
		}
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatal(err)
		}
		m[l.Path] = l.GUID
	}
	return m
}

// sameGUIDs checks that every node names every mailbox by the same GUID.
func sameGUIDs(t *testing.T, c *cluster) map[string]string {
	t.Helper()
	first := mailboxGUIDs(t, c.nodes[0].Store)
	for _, n := range c.nodes[1:] {
		other := mailboxGUIDs(t, n.Store)
		for p, g := range first {
			if other[p] != g {
				t.Fatalf("mailbox %q: GUID %s on %s, %s on %s", p, g, c.nodes[0].Name, other[p], n.Name)
			}
		}
		if len(other) != len(first) {
			t.Fatalf("%s has %d mailboxes, %s %d", c.nodes[0].Name, len(first), n.Name, len(other))
		}
	}
	return first
}

// TestMergeRules checks each merge rule of design §6 where both sides
// change while disconnected and then reconnect. The two nodes' links go
// through proxies that are cut for the conflicting changes.
func TestMergeRules(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 2)
	a, b := c.nodes[0], c.nodes[1]
	when := time.Date(2025, 5, 1, 8, 0, 0, 0, time.UTC)
	body := func(s string) []byte { return []byte("Subject: " + s + "\r\n\r\n" + s + "\r\n") }

	t.Run("expunge beats flag change", func(t *testing.T) {
		mb := "u1/Maildir"
		mkMailbox(t, a.Mnt, mb)
		deliverMsg(t, a.Mnt, mb, "cur", "1000.M1.a:2,", body("one"), when)
		c.converge("setup")
		c.partition()
		sub, name := findMsg(t, a.Mnt, mb, "1000.M1.a")
		if err := os.Remove(filepath.Join(a.Mnt, mb, sub, name)); err != nil {
			t.Fatal(err)
		}
		setFlags(t, b.Mnt, mb, "1000.M1.a", "FS")
		st := c.converge("expunge vs flags")
		if _, ok := st.Mailboxes[mb]["1000.M1.a"]; ok {
			t.Fatalf("expunged message came back: %+v", st.Mailboxes[mb])
		}
	})

	t.Run("seen on one side, answered on the other", func(t *testing.T) {
		mb := "u2/Maildir"
		mkMailbox(t, a.Mnt, mb)
		deliverMsg(t, a.Mnt, mb, "new", "2000.M1.a", body("two"), when)
		c.converge("setup")
		c.partition()
		setFlags(t, a.Mnt, mb, "2000.M1.a", "S")
		setFlags(t, b.Mnt, mb, "2000.M1.a", "R")
		// The link is really down: nothing crosses, and status says so.
		time.Sleep(300 * time.Millisecond)
		if _, name := findMsg(t, b.Mnt, mb, "2000.M1.a"); name != "2000.M1.a:2,R" {
			t.Fatalf("A's change crossed a cut link: B has %s", name)
		}
		if p := peerState(t, a, b.ID); p["connected"] != false || p["lag_ops"] == float64(0) {
			t.Fatalf("A's status of B while cut: %v", p)
		}
		st := c.converge("seen vs answered")
		if m := st.Mailboxes[mb]["2000.M1.a"]; m.Flags != `\Answered \Seen` || m.Sub != "cur" {
			t.Fatalf("flags after merge: %+v, want \\Answered \\Seen in cur", m)
		}
	})

	t.Run("rename vs rename", func(t *testing.T) {
		root := "u3/Maildir"
		mkMailbox(t, a.Mnt, root)
		mkMailbox(t, a.Mnt, root+"/.X")
		deliverMsg(t, a.Mnt, root+"/.X", "cur", "3000.M1.a:2,S", body("three"), when)
		c.converge("setup")
		guid := mailboxGUIDs(t, a.Store)[root+"/.X"]
		c.partition()
		if err := os.Rename(filepath.Join(a.Mnt, root, ".X"), filepath.Join(a.Mnt, root, ".Y")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
		if err := os.Rename(filepath.Join(b.Mnt, root, ".X"), filepath.Join(b.Mnt, root, ".Z")); err != nil {
			t.Fatal(err)
		}
		st := c.converge("rename vs rename")
		// The newer rename (B's) wins; the mailbox keeps its GUID.
		if _, ok := st.Mailboxes[root+"/.Z"]["3000.M1.a"]; !ok {
			t.Fatalf("after rename vs rename: %v", keys(st.Mailboxes))
		}
		for _, gone := range []string{"/.X", "/.Y"} {
			if _, ok := st.Mailboxes[root+gone]; ok {
				t.Fatalf("%s still there: %v", gone, keys(st.Mailboxes))
			}
		}
		if g := sameGUIDs(t, c)[root+"/.Z"]; g != guid {
			t.Fatalf("renamed mailbox GUID %s, want %s", g, guid)
		}
	})

	t.Run("rename vs delete", func(t *testing.T) {
		root := "u4/Maildir"
		mkMailbox(t, a.Mnt, root)
		mkMailbox(t, a.Mnt, root+"/.R")
		deliverMsg(t, a.Mnt, root+"/.R", "cur", "4000.M1.a:2,S", body("four"), when)
		c.converge("setup")
		c.partition()
		if err := os.Rename(filepath.Join(a.Mnt, root, ".R"), filepath.Join(a.Mnt, root, ".R2")); err != nil {
			t.Fatal(err)
		}
		deleteMailboxDovecotStyle(t, b.Mnt, root+"/.R")
		st := c.converge("rename vs delete")
		for _, gone := range []string{"/.R", "/.R2"} {
			if _, ok := st.Mailboxes[root+gone]; ok {
				t.Fatalf("deleted mailbox survives as %s: %v", gone, keys(st.Mailboxes))
			}
		}
	})

	t.Run("mailbox deleted while the other side got new mail", func(t *testing.T) {
		root := "u5/Maildir"
		mkMailbox(t, a.Mnt, root)
		mkMailbox(t, a.Mnt, root+"/.D")
		deliverMsg(t, a.Mnt, root+"/.D", "cur", "5000.M1.a:2,S", body("old"), when)
		c.converge("setup")
		c.partition()
		deleteMailboxDovecotStyle(t, a.Mnt, root+"/.D")
		deliverMsg(t, b.Mnt, root+"/.D", "new", "5001.M2.b", body("new mail"), when)
		st := c.converge("delete vs new mail")
		got := st.Mailboxes[root+"/.D"]
		if _, ok := got["5001.M2.b"]; !ok || len(got) != 1 {
			t.Fatalf("after delete vs new mail, .D holds %v; want only the new mail", got)
		}
		sameGUIDs(t, c)
	})

	t.Run("same folder created on both sides", func(t *testing.T) {
		root := "u6/Maildir"
		mkMailbox(t, a.Mnt, root)
		c.converge("setup")
		c.partition()
		mkMailbox(t, a.Mnt, root+"/.Sent")
		deliverMsg(t, a.Mnt, root+"/.Sent", "cur", "6000.M1.a:2,S", body("sent on a"), when)
		mkMailbox(t, b.Mnt, root+"/.Sent")
		deliverMsg(t, b.Mnt, root+"/.Sent", "cur", "6001.M1.b:2,S", body("sent on b"), when)
		st := c.converge("same name created on both")
		if len(st.Mailboxes[root+"/.Sent"]) != 2 {
			t.Fatalf(".Sent holds %v, want both messages", st.Mailboxes[root+"/.Sent"])
		}
		sameGUIDs(t, c)
	})

	t.Run("subscription race", func(t *testing.T) {
		dir := "u7/Maildir"
		mkMailbox(t, a.Mnt, dir)
		writeSubscriptions(t, a.Mnt, dir, "INBOX")
		c.converge("setup")
		c.partition()
		writeSubscriptions(t, a.Mnt, dir, "INBOX", "Foo", "Bar")
		time.Sleep(5 * time.Millisecond)
		writeSubscriptions(t, b.Mnt, dir, "INBOX", "Foo")
		time.Sleep(5 * time.Millisecond)
		writeSubscriptions(t, b.Mnt, dir, "INBOX")
		st := c.converge("subscription race")
		// Foo: A subscribed, B subscribed then unsubscribed later: newest
		// wins. Bar: only A subscribed.
		if got := st.Subs[dir+"/subscriptions"]; got != "Bar|INBOX" {
			t.Fatalf("subscriptions after the race: %q, want Bar|INBOX", got)
		}
	})

	t.Run("same key with different bytes", func(t *testing.T) {
		mb := "u8/Maildir"
		mkMailbox(t, a.Mnt, mb)
		c.converge("setup")
		c.partition()
		deliverMsg(t, a.Mnt, mb, "cur", "8000.M1.same:2,S", body("bytes of a"), when)
		deliverMsg(t, b.Mnt, mb, "cur", "8000.M1.same:2,F", body("bytes of b"), when)
		st := c.converge("same key, different bytes")
		if len(st.Mailboxes[mb]) != 2 {
			t.Fatalf("mailbox holds %v, want both versions", st.Mailboxes[mb])
		}
		found := false
		for k := range st.Mailboxes[mb] {
			found = found || strings.HasPrefix(k, "8000.M1.same.mailfs-conflict-")
		}
		if !found {
			t.Fatalf("no conflict copy: %v", st.Mailboxes[mb])
		}
	})
	for _, n := range c.nodes {
		if strings.Contains(n.Log(), "level=ERROR") {
			t.Errorf("%s logged errors:\n%s", n.Name, n.Log())
		}
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
