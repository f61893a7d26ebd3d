package tests

import (
	"os"
	"path/filepath"
	"testing"
	"time"
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
}
