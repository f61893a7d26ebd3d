package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCrashReceiverCatchUp: the receiving daemon is SIGKILLed several times
// in the middle of a large catch-up (its segments applied in bulk, with
// their index commits grouped per segment), then restarted. The stores end
// equal, nothing is duplicated, and the receiver's own journal holds none
// of the peer's ops (a file delivered before the crash but not yet
// committed is recorded as the peer's, not journaled as a local add that
// would echo back).
func TestCrashReceiverCatchUp(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 2)
	a, b := c.nodes[0], c.nodes[1]
	inbox := "example.com/carol/Maildir"
	mkMailbox(t, a.Mnt, inbox)
	mkMailbox(t, a.Mnt, inbox+"/.Archive")
	writeKeywords(t, a.Mnt, inbox, "$Important", "Work")
	writeKeywords(t, a.Mnt, inbox+"/.Archive", "$Important", "Work")
	checkConverged(t, "mailboxes created on A", a, b)
	bSeq := journalSeq(t, b)

	// A catch-up of n deliveries and some flag changes made while the
	// link is cut.
	c.cut(0, 1)
	const n = 1500
	base := time.Date(2025, 4, 1, 9, 0, 0, 0, time.UTC)
	letters := []string{"", "S", "RS", "FS", "aS", "bF"}
	for i := 0; i < n; i++ {
		mb := inbox
		if i%5 == 0 {
			mb = inbox + "/.Archive"
		}
		body := []byte(fmt.Sprintf("From: x%d@example.org\r\nSubject: catch-up %d\r\n\r\n%s\r\n", i, i,
			strings.Repeat("x", 100+(i%13)*700)))
		key := fmt.Sprintf("%d.M%dP7.crashrx", 1710000000+i, i)
		if i%4 == 0 {
			deliverMsg(t, a.Mnt, mb, "new", key, body, base.Add(time.Duration(i)*time.Second))
		} else {
			deliverMsg(t, a.Mnt, mb, "cur", key+":2,"+letters[i%len(letters)], body, base.Add(time.Duration(i)*time.Second))
		}
	}
	for i := 1; i < n; i += 37 {
		if i%5 != 0 {
			setFlags(t, a.Mnt, inbox, fmt.Sprintf("%d.M%dP7.crashrx", 1710000000+i, i), "FRS")
		}
	}

	// Heal, and kill B whenever it has applied part of the catch-up.
	c.heal(0, 1)
	kills := 0
	var logs strings.Builder // of each of B's runs
	for round := 0; round < 3; round++ {
		deadline := time.Now().Add(60 * time.Second)
		before := rxCount(b.Mnt, inbox)
		for {
			got := rxCount(b.Mnt, inbox)
			if got > before+50 && got < n-100 {
				break
			}
			if got >= n-100 || time.Now().After(deadline) {
				t.Logf("round %d: B has %d of %d messages: catch-up too far along to kill", round, got, n)
				goto done
			}
			time.Sleep(5 * time.Millisecond)
		}
		t.Logf("round %d: SIGKILL of B with %d of %d messages applied", round, rxCount(b.Mnt, inbox), n)
		logs.WriteString(b.Log())
		c.restart(1, true)
		kills++
	}
done:
	if kills == 0 {
		t.Fatalf("never caught B in the middle of the catch-up")
	}
	st := c.converge("catch-up after SIGKILLs of the receiver")
	total := len(st.Mailboxes[inbox]) + len(st.Mailboxes[inbox+"/.Archive"])
	if total != n {
		t.Fatalf("after the catch-up: %d messages, want %d", total, n)
	}
	for mb, msgs := range st.Mailboxes {
		for key := range msgs {
			if strings.Contains(key, "mailfs-conflict") {
				t.Fatalf("duplicate (conflict copy) %s in %s", key, mb)
			}
		}
	}
	if m := st.Mailboxes[inbox]["1710000001.M1P7.crashrx"]; m.Flags != `\Answered \Flagged \Seen` || m.Sub != "cur" {
		t.Fatalf("flags of a changed message after the catch-up: %+v", m)
	}
	// Echo suppression across the crashes: B journaled nothing of A's.
	if ops := journalOps(t, b.Store); uint64(len(ops)) != bSeq {
		t.Fatalf("B journaled %d ops while only applying A's (had %d before; last: %+v)\nB:\n%s",
			len(ops), bSeq, ops[len(ops)-1], tail(b.Log(), 40))
	}
	logs.WriteString(b.Log())
	t.Logf("files applied before a crash and recorded as the peer's by the reconcile after it: %d",
		strings.Count(logs.String(), "recorded as the peer's"))
}

// journalSeq is n's journal length (status journal_seq).
func journalSeq(t *testing.T, n *node) uint64 {
	t.Helper()
	seq, _ := statusJSON(t, n.Store)["node"].(map[string]any)["journal_seq"].(float64)
	return uint64(seq)
}

// rxCount counts the message files of mailbox mb (and its .Archive).
func rxCount(mnt, mb string) int {
	total := 0
	for _, m := range []string{mb, mb + "/.Archive"} {
		for _, s := range []string{"new", "cur"} {
			ents, _ := os.ReadDir(filepath.Join(mnt, m, s))
			total += len(ents)
		}
	}
	return total
}
