package tests

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
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
				d := fmt.Sprintf("mailbox %q: GUID %s on %s, %s on %s", p, g, c.nodes[0].Name, other[p], n.Name)
				dumpLogs(t, c.nodes)
				t.Fatalf("%s\nrelated ops:\n%s", d, relatedOps(t, c.nodes, strings.SplitN(p, "/", 2)[0], d))
			}
		}
		if len(other) != len(first) {
			var only []string
			for p, g := range other {
				if _, ok := first[p]; !ok {
					only = append(only, p+"="+g)
				}
			}
			sort.Strings(only)
			d := fmt.Sprintf("%s has %d mailboxes, %s %d; on %s only: %v", c.nodes[0].Name, len(first), n.Name, len(other), n.Name, only)
			dumpLogs(t, c.nodes)
			sub := ""
			if len(only) > 0 {
				sub = strings.SplitN(only[0], "/", 2)[0]
			}
			t.Fatalf("%s\nrelated ops:\n%s", d, relatedOps(t, c.nodes, sub, d))
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
	t.Run("plain file written differently on both sides", func(t *testing.T) {
		script := "u9/sieve/main.sieve"
		mkMailbox(t, a.Mnt, "u9/Maildir")
		writePlain(t, a.Mnt, script, "require \"fileinto\";\n", 0o644)
		c.converge("setup")
		c.partition()
		// A edits twice (only its last version meets B's), B edits later.
		writePlain(t, a.Mnt, script, "# a, draft\n", 0o640)
		writePlain(t, a.Mnt, script, "# a, final\n", 0o640)
		time.Sleep(20 * time.Millisecond)
		writePlain(t, b.Mnt, script, "# b\n", 0o644)
		journaled := map[string]int{}
		for _, n := range c.nodes {
			journaled[n.Name] = len(journalOps(t, n.Store))
		}
		st := c.converge("plain file vs plain file")
		if got := st.Files[script]; got != sum8("# b\n") {
			t.Fatalf("%s holds %s, want B's newer version %s", script, got, sum8("# b\n"))
		}
		copies := conflictCopies(st, script)
		if len(copies) != 1 || st.Files[copies[0]] != sum8("# a, final\n") {
			t.Fatalf("conflict copies of %s: %v, want one holding A's last version (%v)", script, copies, st.Files)
		}
		if want := script + ".mailfs-conflict-" + strings.ToLower(strings.ReplaceAll(a.ID, "-", ""))[:8] + "-"; !strings.HasPrefix(copies[0], want) {
			t.Fatalf("conflict copy %s, want it named %s<seq> (A's version)", copies[0], want)
		}
		for _, n := range c.nodes {
			fi, err := os.Stat(filepath.Join(n.Mnt, copies[0]))
			if err != nil || fi.Mode().Perm() != 0o640 {
				t.Fatalf("%s: conflict copy %s: %v, mode %v; want mode 0640 like A's version", n.Name, copies[0], err, fi.Mode())
			}
			// Each node derives the copy from the ops it applied: none is
			// journaled (no echo, rule 11).
			ops := journalOps(t, n.Store)
			for _, op := range ops {
				if strings.Contains(op.Path, ".mailfs-conflict-") {
					t.Fatalf("%s journaled an op for a conflict copy: %+v", n.Name, op)
				}
			}
			if len(ops) != journaled[n.Name] {
				t.Fatalf("%s journaled %d ops while applying the other's, want none: %+v", n.Name, len(ops)-journaled[n.Name],
					ops[journaled[n.Name]:])
			}
		}
	})

	t.Run("plain file written alike on both sides", func(t *testing.T) {
		acl := "u10/Maildir/dovecot-acl"
		mkMailbox(t, a.Mnt, "u10/Maildir")
		c.converge("setup")
		c.partition()
		writePlain(t, a.Mnt, acl, "owner lrwstipekxa\n", 0o600)
		writePlain(t, b.Mnt, acl, "owner lrwstipekxa\n", 0o600)
		st := c.converge("same plain file on both")
		if st.Files[acl] != sum8("owner lrwstipekxa\n") || len(conflictCopies(st, acl)) != 0 {
			t.Fatalf("%s after writing the same bytes on both: %v", acl, st.Files)
		}
	})

	t.Run("plain file deleted on one side, written on the other", func(t *testing.T) {
		dir := "u11/Maildir"
		mkMailbox(t, a.Mnt, dir)
		kept, gone := dir+"/kept.sieve", dir+"/gone.sieve"
		writePlain(t, a.Mnt, kept, "v1\n", 0o644)
		writePlain(t, a.Mnt, gone, "v1\n", 0o644)
		c.converge("setup")
		c.partition()
		// kept: the write is newer than the delete and stays at the path.
		// gone: the delete is newer; the write it had not seen is kept as
		// a conflict copy.
		if err := os.Remove(filepath.Join(a.Mnt, kept)); err != nil {
			t.Fatal(err)
		}
		writePlain(t, b.Mnt, gone, "v2 on b\n", 0o644)
		time.Sleep(20 * time.Millisecond)
		writePlain(t, b.Mnt, kept, "v2 on b\n", 0o644)
		if err := os.Remove(filepath.Join(a.Mnt, gone)); err != nil {
			t.Fatal(err)
		}
		st := c.converge("delete vs write")
		if st.Files[kept] != sum8("v2 on b\n") || len(conflictCopies(st, kept)) != 0 {
			t.Fatalf("%s after an older delete and a newer write: %v", kept, st.Files)
		}
		copies := conflictCopies(st, gone)
		if _, there := st.Files[gone]; there || len(copies) != 1 || st.Files[copies[0]] != sum8("v2 on b\n") {
			t.Fatalf("%s after a newer delete of an older write: %v", gone, st.Files)
		}
	})
	for _, n := range c.nodes {
		if strings.Contains(n.Log(), "level=ERROR") {
			t.Errorf("%s logged errors:\n%s", n.Name, n.Log())
		}
	}
}

// writePlain writes a plain file through the mount as an editor does
// (truncate, write, close), with mode perm.
func writePlain(t *testing.T, mnt, rel, content string, perm os.FileMode) {
	t.Helper()
	p := filepath.Join(mnt, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, perm); err != nil {
		t.Fatal(err)
	}
}

func sum8(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:8])
}

// conflictCopies lists the conflict copies of the plain file rel.
func conflictCopies(st treeState, rel string) []string {
	var out []string
	for p := range st.Files {
		if strings.HasPrefix(p, rel+".mailfs-conflict-") {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
