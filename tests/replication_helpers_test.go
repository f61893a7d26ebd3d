package tests

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"mailfs/maildir"
)

// node is one running mailfs of a replication test.
type node struct {
	*mailfsProc
	Name string
	ID   string
	Addr string
}

// startNodes inits and mounts n nodes on loopback and pairs every two of
// them with invite/join (a full mesh), waiting until all are connected.
func startNodes(t *testing.T, n int) []*node {
	t.Helper()
	nodes := make([]*node, n)
	for i := range nodes {
		store, mnt := newStoreDirs(t)
		name := fmt.Sprintf("node%c", 'a'+i)
		addr := freeAddr(t)
		initNode(t, store, name)
		p := startMailfs(t, store, mnt, "--listen", addr)
		nodes[i] = &node{mailfsProc: p, Name: name, Addr: addr, ID: nodeID(t, statusJSON(t, store))}
	}
	for i := range nodes {
		for j := i + 1; j < n; j++ {
			pairNodes(t, nodes[i], nodes[j])
		}
	}
	for i := range nodes {
		for j := range nodes {
			if i != j {
				waitConnected(t, nodes[i].Name, nodes[i].Store, nodes[j].ID, nodes[j].Name, nodes[j].Addr)
			}
		}
	}
	return nodes
}

func pairNodes(t *testing.T, inviter, joiner *node) {
	t.Helper()
	out, errs, code := runMailfs(t, "pair", "invite", "--store", inviter.Store)
	if code != 0 {
		t.Fatalf("pair invite on %s: exit %d: %s", inviter.Name, code, errs)
	}
	if out, errs, code := runMailfs(t, "pair", "join", "--store", joiner.Store, strings.TrimSpace(out)); code != 0 {
		t.Fatalf("pair join on %s: exit %d: %s%s", joiner.Name, code, out, errs)
	}
}

// syncAll runs `mailfs sync` on every node, expecting exit 0.
func syncAll(t *testing.T, nodes ...*node) {
	t.Helper()
	for _, n := range nodes {
		if out, errs, code := runMailfs(t, "sync", "--store", n.Store, "--timeout", "90s"); code != 0 {
			var logs strings.Builder
			for _, m := range nodes {
				fmt.Fprintf(&logs, "--- %s:\n%s\n", m.Name, tail(m.Log(), 25))
			}
			dumpLogs(t, nodes)
			t.Fatalf("mailfs sync on %s: exit %d: %s%s\nlogs:\n%s", n.Name, code, out, errs, logs.String())
		}
	}
}

func tail(s string, lines int) string {
	l := strings.Split(s, "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

// msgState is what a client sees of one message.
type msgState struct {
	Sub   string
	Flags string // flag names, by name (letters differ per node)
	Sum   string
	Mtime int64
}

// treeState is what a client sees of a whole tree: mailboxes and their
// messages by key, subscriptions by file, plain files by path.
type treeState struct {
	Mailboxes map[string]map[string]msgState
	Subs      map[string]string
	Files     map[string]string
}

// snapshot walks the tree at root (a mountpoint) as a Maildir reader sees
// it.
func snapshot(t *testing.T, root string) treeState {
	t.Helper()
	return snapshotUnder(t, root, "")
}

// snapshotUnder is snapshot of the subtree sub of root only (paths stay
// relative to root).
func snapshotUnder(t *testing.T, root, sub string) treeState {
	t.Helper()
	ts := treeState{Mailboxes: map[string]map[string]msgState{}, Subs: map[string]string{}, Files: map[string]string{}}
	top := filepath.Join(root, filepath.FromSlash(sub))
	err := filepath.Walk(top, func(p string, fi os.FileInfo, err error) error {
		if err != nil && p == top && sub != "" && os.IsNotExist(err) {
			return nil // no such subtree: nothing in it
		}
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		if rel == "." {
			return nil
		}
		c := maildir.Classify(rel, fi.IsDir())
		switch {
		case fi.IsDir() && c.Kind == maildir.KindMailboxSubdir && c.Sub == "cur":
			if ts.Mailboxes[c.Mailbox] == nil {
				ts.Mailboxes[c.Mailbox] = map[string]msgState{}
			}
		case fi.IsDir() && c.Kind == maildir.KindMailboxSubdir && c.Sub == "tmp":
			return filepath.SkipDir
		case !fi.IsDir() && c.Kind == maildir.KindMessage:
			n, err := maildir.ParseName(c.Name)
			if err != nil {
				t.Errorf("%s: %v", p, err)
				return nil
			}
			kw, _ := os.ReadFile(filepath.Join(root, c.Mailbox, "dovecot-keywords"))
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(data)
			if ts.Mailboxes[c.Mailbox] == nil {
				ts.Mailboxes[c.Mailbox] = map[string]msgState{}
			}
			if _, dup := ts.Mailboxes[c.Mailbox][n.Base]; dup {
				t.Errorf("%s: key %s twice in mailbox %q", root, n.Base, c.Mailbox)
			}
			ts.Mailboxes[c.Mailbox][n.Base] = msgState{Sub: c.Sub,
				Flags: strings.Join(maildir.FlagNames(n.Letters(), maildir.ParseKeywords(kw)), " "),
				Sum:   hex.EncodeToString(sum[:8]), Mtime: fi.ModTime().UnixNano()}
		case !fi.IsDir() && c.Kind == maildir.KindSubscriptions:
			data, _ := os.ReadFile(p)
			names := maildir.ParseSubscriptions(data)
			sort.Strings(names)
			ts.Subs[rel] = strings.Join(names, "|")
		case !fi.IsDir() && c.Kind == maildir.KindPlainFile:
			data, _ := os.ReadFile(p)
			sum := sha256.Sum256(data)
			ts.Files[rel] = hex.EncodeToString(sum[:8])
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	return ts
}

// diffTrees describes how b differs from a (empty when equal).
func diffTrees(a, b treeState, an, bn string) string {
	var d []string
	for mb, msgs := range a.Mailboxes {
		other, ok := b.Mailboxes[mb]
		if !ok {
			d = append(d, fmt.Sprintf("mailbox %q on %s only", mb, an))
			continue
		}
		for k, m := range msgs {
			o, ok := other[k]
			switch {
			case !ok:
				d = append(d, fmt.Sprintf("%q %s on %s only (%+v)", mb, k, an, m))
			case o != m:
				d = append(d, fmt.Sprintf("%q %s differs: %s %+v, %s %+v", mb, k, an, m, bn, o))
			}
		}
		for k, o := range other {
			if _, ok := msgs[k]; !ok {
				d = append(d, fmt.Sprintf("%q %s on %s only (%+v)", mb, k, bn, o))
			}
		}
	}
	for mb := range b.Mailboxes {
		if _, ok := a.Mailboxes[mb]; !ok {
			d = append(d, fmt.Sprintf("mailbox %q on %s only", mb, bn))
		}
	}
	for _, pair := range [][2]map[string]string{{a.Subs, b.Subs}, {a.Files, b.Files}} {
		for k, v := range pair[0] {
			if pair[1][k] != v {
				d = append(d, fmt.Sprintf("%s: %s has %q, %s has %q", k, an, v, bn, pair[1][k]))
			}
		}
		for k, v := range pair[1] {
			if _, ok := pair[0][k]; !ok {
				d = append(d, fmt.Sprintf("%s: on %s only (%q)", k, bn, v))
			}
		}
	}
	sort.Strings(d)
	if len(d) > 20 {
		d = append(d[:20], fmt.Sprintf("... and %d more", len(d)-20))
	}
	return strings.Join(d, "\n")
}

// checkConverged syncs every node and checks that all trees are equal.
func checkConverged(t *testing.T, step string, nodes ...*node) treeState {
	t.Helper()
	return checkConvergedUnder(t, step, "", nodes...)
}

// checkConvergedUnder is checkConverged comparing only the subtree sub of
// every mount ("" is all of it).
func checkConvergedUnder(t *testing.T, step, sub string, nodes ...*node) treeState {
	t.Helper()
	syncAll(t, nodes...)
	first := snapshotUnder(t, nodes[0].Mnt, sub)
	for _, n := range nodes[1:] {
		if d := diffTrees(first, snapshotUnder(t, n.Mnt, sub), nodes[0].Name, n.Name); d != "" {
			dumpLogs(t, nodes)
			t.Fatalf("%s: trees differ after sync:\n%s\nrelated ops:\n%s", step, d, relatedOps(t, nodes, sub, d))
		}
	}
	return first
}

// dumpLogs writes every node's whole log into $MAILFS_TEST_LOG_DIR, when
// set: a divergence report shows only the lines that name what differs.
func dumpLogs(t *testing.T, nodes []*node) { dumpLogsAs(t, "", nodes) }

// dumpLogsAs is dumpLogs with tag added to the file names (a test that
// runs several clusters).
func dumpLogsAs(t *testing.T, tag string, nodes []*node) {
	t.Helper()
	dir := os.Getenv("MAILFS_TEST_LOG_DIR")
	if dir == "" {
		return
	}
	name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()) + tag
	for _, n := range nodes {
		p := filepath.Join(dir, name+"-"+n.Name+".log")
		if err := os.WriteFile(p, []byte(n.Log()), 0o644); err != nil {
			t.Logf("writing %s's log: %v", n.Name, err)
			continue
		}
		t.Logf("%s's log: %s", n.Name, p)
	}
}

// deliverMsg delivers body into mailbox mb under mnt as an MDA does (tmp,
// fsync, rename) with the given name in sub, and the given mtime.
func deliverMsg(t testing.TB, mnt, mb, sub, name string, body []byte, mtime time.Time) {
	t.Helper()
	if err := deliverErr(mnt, mb, sub, name, body, mtime); err != nil {
		t.Fatalf("deliver %s into %s: %v", name, mb, err)
	}
}

// deliverErr is deliverMsg returning its error (for goroutines, and for
// random scenarios where a peer's change may win a race).
func deliverErr(mnt, mb, sub, name string, body []byte, mtime time.Time) error {
	base := strings.SplitN(name, ":", 2)[0]
	tmp := filepath.Join(mnt, mb, "tmp", base)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(body)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chtimes(tmp, mtime, mtime)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, filepath.Join(mnt, mb, sub, name))
}

// mkMailbox creates a Maildir (tmp, new, cur) at mb under mnt.
func mkMailbox(t testing.TB, mnt, mb string) {
	t.Helper()
	for _, s := range []string{"", "tmp", "new", "cur"} {
		if err := os.MkdirAll(filepath.Join(mnt, mb, s), 0o700); err != nil {
			t.Fatal(err)
		}
	}
}

// findMsg returns the current file name of key in mailbox mb (cur or new).
func findMsg(t testing.TB, mnt, mb, key string) (sub, name string) {
	t.Helper()
	for _, s := range []string{"cur", "new"} {
		ents, err := os.ReadDir(filepath.Join(mnt, mb, s))
		if err != nil {
			continue
		}
		for _, e := range ents {
			if strings.SplitN(e.Name(), ":", 2)[0] == key {
				return s, e.Name()
			}
		}
	}
	t.Fatalf("message %s not in %s/%s", key, mnt, mb)
	return "", ""
}

// setFlags renames key in mailbox mb to carry letters (into cur/).
func setFlags(t testing.TB, mnt, mb, key, letters string) {
	t.Helper()
	sub, name := findMsg(t, mnt, mb, key)
	if err := os.Rename(filepath.Join(mnt, mb, sub, name), filepath.Join(mnt, mb, "cur", key+":2,"+letters)); err != nil {
		t.Fatalf("set flags of %s: %v", key, err)
	}
}

func writeSubscriptions(t testing.TB, mnt, dir string, names ...string) {
	t.Helper()
	data := "V\t2\n\n" + strings.Join(names, "\n")
	if len(names) > 0 {
		data += "\n"
	}
	replaceLocked(t, filepath.Join(mnt, dir, "subscriptions"), []byte(data))
}

func writeKeywords(t testing.TB, mnt, mb string, names ...string) {
	t.Helper()
	var b strings.Builder
	for i, n := range names {
		fmt.Fprintf(&b, "%d %s\n", i, n)
	}
	replaceLocked(t, filepath.Join(mnt, mb, "dovecot-keywords"), []byte(b.String()))
}

// replaceLocked replaces the file at p the way Dovecot does: a dotlock
// p.lock created exclusively (waiting while another writer holds it),
// written, then renamed over p.
func replaceLocked(t testing.TB, p string, data []byte) {
	t.Helper()
	if err := replaceLockedErr(p, data, 10*time.Second); err != nil {
		t.Fatal(err)
	}
}

func replaceLockedErr(p string, data []byte, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		f, err := os.OpenFile(p+".lock", os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err == nil {
			_, err = f.Write(data)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err == nil {
				err = os.Rename(p+".lock", p)
			}
			return err
		}
		if !os.IsExist(err) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// deleteMailboxDovecotStyle deletes mailbox mb the way Dovecot does:
// rename into its trash name, then remove it.
func deleteMailboxDovecotStyle(t testing.TB, mnt, mb string) {
	t.Helper()
	trash := filepath.Join(mnt, path.Dir(mb), "..DOVECOT-TRASHED")
	if err := os.Rename(filepath.Join(mnt, mb), trash); err != nil {
		t.Fatalf("delete mailbox %s: %v", mb, err)
	}
	if err := os.RemoveAll(trash); err != nil {
		t.Fatal(err)
	}
}

// relatedOps is what a divergence report shows of the nodes: their
// mailboxes (with GUIDs) under sub, and the ops and log lines that concern
// sub or name something in the differences d.
func relatedOps(t *testing.T, nodes []*node, sub, d string) string {
	t.Helper()
	var ops strings.Builder
	for _, m := range nodes {
		// Where each node has which mailbox, under which GUID.
		st := snapshotUnder(t, m.Mnt, sub)
		guids := mailboxGUIDs(t, m.Store)
		var mbs []string
		for mb, msgs := range st.Mailboxes {
			mbs = append(mbs, fmt.Sprintf("%s=%s(%d)", mb, guids[mb], len(msgs)))
		}
		sort.Strings(mbs)
		fmt.Fprintf(&ops, "%s mailboxes: %s\n", m.Name, strings.Join(mbs, " "))
	}
	for _, m := range nodes {
		for _, op := range journalOps(t, m.Store) {
			inSub := sub != "" && (strings.HasPrefix(op.Path, sub+"/") || strings.HasPrefix(op.NewPath, sub+"/"))
			if inSub || (op.Key != "" && strings.Contains(d, op.Key)) || (op.Path != "" && strings.Contains(d, op.Path+"\"")) ||
				(strings.HasSuffix(op.Kind, "ubscribe") && strings.Contains(d, "subscriptions")) ||
				strings.HasPrefix(op.Kind, "Mailbox") {
				fmt.Fprintf(&ops, "%s: %+v\n", m.Name, op)
			}
		}
		for _, l := range strings.Split(m.Log(), "\n") {
			if strings.Contains(l, "level=ERROR") || strings.Contains(l, "merging") || strings.Contains(l, "conflict") ||
				strings.Contains(l, "keeps mail") || (sub != "" && strings.Contains(l, sub+"/")) {
				fmt.Fprintf(&ops, "%s log: %s\n", m.Name, l)
			}
		}
	}
	return ops.String()
}
