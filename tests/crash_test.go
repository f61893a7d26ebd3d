package tests

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"mailfs/maildir"
)

// TestCrashSIGKILL is design §7's acceptance test: a `mailfs mount` child
// under a delivery, flag-rename and expunge load is SIGKILLed at a random
// moment, over and over. After every remount:
//
//   - every operation that returned success is there (a delivery exists
//     under its acknowledged name, an expunged message is gone); an
//     operation that failed because of the kill may or may not have
//     happened, but nothing else may appear;
//   - the journal's seqs are exactly 1..N;
//   - the journal, folded into a mailbox/message model, matches the files
//     in every mailbox's new/ and cur/, and `status` counts what is on disk.
//
// MAILFS_CRASH_SEED repeats a run's choices (the kill moments themselves
// depend on timing); MAILFS_CRASH_ROUNDS raises the number of rounds.
func TestCrashSIGKILL(t *testing.T) {
	requireFUSE(t)
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("MAILFS_CRASH_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("MAILFS_CRASH_SEED=%q: %v", s, err)
		}
		seed = v
	}
	rounds := 20
	if s := os.Getenv("MAILFS_CRASH_ROUNDS"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			t.Fatalf("MAILFS_CRASH_ROUNDS=%q: want a positive number", s)
		}
		rounds = v
	}
	t.Logf("seed %d, %d rounds (repeat with MAILFS_CRASH_SEED=%d)", seed, rounds, seed)
	// A -race mailfs sleeps 1 s at exit by default; every check runs the
	// CLI twice per round.
	t.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	rng := rand.New(rand.NewPCG(seed, 0x6d61696c6673))
	start := time.Now()

	store, mnt := newStoreDirs(t)
	// Registered before any mount, so it runs after every mailfs is gone.
	t.Cleanup(func() { crashNoMounts(t, filepath.Dir(store)) })
	backing := filepath.Join(store, "maildir")
	mailboxes := []string{crashDomain + "/u0/Maildir", crashDomain + "/u1/Maildir", crashDomain + "/u2/Maildir"}

	p := startMailfs(t, store, mnt)
	for _, mb := range mailboxes {
		for _, sub := range []string{"cur", "new", "tmp"} {
			if err := os.MkdirAll(filepath.Join(mnt, mb, sub), 0o755); err != nil {
				t.Fatalf("setting up mailbox %s: %v", mb, err)
			}
		}
	}

	c := &crashChecker{t: t, store: store, backing: backing, dropped: map[crashKey]string{}}
	c.verify(p, "after setup")
	var totals crashTotals
	for round := 1; round <= rounds; round++ {
		nworkers := 2 + rng.IntN(2)
		runFor := time.Duration(100+rng.IntN(601)) * time.Millisecond
		workers := make([]*crashWorker, nworkers)
		for i := range workers {
			workers[i] = &crashWorker{id: i, round: round, mnt: mnt, mailboxes: mailboxes,
				rng: rand.New(rand.NewPCG(rng.Uint64(), rng.Uint64()))}
		}
		// Hand every live message to one worker: only its owner renames or
		// expunges it, so each message's history is sequential.
		live := c.live()
		rng.Shuffle(len(live), func(i, j int) { live[i], live[j] = live[j], live[i] })
		for i, m := range live {
			w := workers[i%nworkers]
			w.owned = append(w.owned, m)
		}

		var killed atomic.Bool
		var wg sync.WaitGroup
		for _, w := range workers {
			w.killed = &killed
			wg.Add(1)
			go func() {
				defer wg.Done()
				w.run()
			}()
		}
		time.Sleep(runFor)
		killed.Store(true)
		if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatalf("round %d: SIGKILL: %v", round, err)
		}
		joined := make(chan struct{})
		go func() {
			wg.Wait()
			close(joined)
		}()
		select {
		case <-joined:
		case <-time.After(30 * time.Second):
			p.Kill()
			t.Fatalf("round %d: workers still blocked 30s after SIGKILL", round)
		}
		// Only now clear the dead mount: a worker still running would
		// otherwise write into the bare mountpoint.
		p.Kill()

		var st crashTotals
		for _, w := range workers {
			for _, e := range w.unexpected {
				t.Errorf("round %d: worker %d: an operation failed before the kill: %s", round, w.id, e)
			}
			st.add(w.stats)
			c.msgs = append(c.msgs, w.born...)
		}
		totals.add(st)
		t.Logf("round %2d: %d workers, killed after %v: acknowledged %d deliveries, %d flag renames, %d expunges; %d ops cut by the kill",
			round, nworkers, runFor, st.delivered, st.renamed, st.expunged, st.cut)
		if t.Failed() {
			t.FailNow()
		}

		t0 := time.Now()
		p = startMailfs(t, store, mnt)
		t1 := time.Now()
		c.verify(p, fmt.Sprintf("round %d", round))
		t.Logf("round %2d: remount %v, checks %v", round, t1.Sub(t0).Round(time.Millisecond), time.Since(t1).Round(time.Millisecond))
	}

	// A clean stop at the end, then the same checks on the store offline.
	p.Stop()
	if t.Failed() {
		t.FailNow()
	}
	c.verify(nil, "offline after the final clean stop")
	t.Logf("%d rounds in %v: acknowledged %d deliveries, %d flag renames, %d expunges; %d ops cut by kills; %d messages, journal seq %d at the end",
		rounds, time.Since(start).Round(time.Millisecond), totals.delivered, totals.renamed, totals.expunged, totals.cut,
		len(c.msgs), c.lastSeq)
}

const crashDomain = "example.com"

// crashKey names a message: its mailbox path and its base name.
type crashKey struct{ mbox, key string }

// crashMsg is a message the test delivered or tried to deliver. Names are
// relative to the mailbox: "new/K" or "cur/K:2,FS"; "" means absent.
type crashMsg struct {
	mbox, key string
	// acked is where the last operation that returned success left it.
	acked string
	// cut is set when the last operation on it failed because of the
	// kill; then maybe is where that operation would have left it.
	cut      bool
	maybe    string
	expunged bool // an expunge returned success
}

type crashTotals struct{ delivered, renamed, expunged, cut int }

func (a *crashTotals) add(b crashTotals) {
	a.delivered += b.delivered
	a.renamed += b.renamed
	a.expunged += b.expunged
	a.cut += b.cut
}

// crashWorker delivers, flag-renames and expunges through the mount until
// the daemon is killed under it.
type crashWorker struct {
	id, round  int
	mnt        string
	mailboxes  []string
	rng        *rand.Rand
	owned      []*crashMsg // live messages it may rename or expunge
	born       []*crashMsg // messages whose delivery it attempted
	n          int
	killed     *atomic.Bool
	unexpected []string
	stats      crashTotals
}

var errCrashStop = errors.New("stop")

func (w *crashWorker) run() {
	for !w.killed.Load() {
		var err error
		switch r := w.rng.IntN(100); {
		case r < 50 || len(w.owned) == 0:
			err = w.deliver()
		case r < 88:
			err = w.rename()
		default:
			err = w.expunge()
		}
		if err != nil {
			return
		}
	}
}

// fail records an operation's error: expected once the daemon is killed,
// a test failure before.
func (w *crashWorker) fail(what string, err error) error {
	if !w.killed.Load() {
		w.unexpected = append(w.unexpected, fmt.Sprintf("%s: %v", what, err))
	}
	return errCrashStop
}

func (w *crashWorker) path(m *crashMsg, name string) string {
	return filepath.Join(w.mnt, m.mbox, filepath.FromSlash(name))
}

func (w *crashWorker) deliver() error {
	w.n++
	m := &crashMsg{mbox: w.mailboxes[w.rng.IntN(len(w.mailboxes))],
		key: fmt.Sprintf("%d.R%dW%dN%d.crashtest", 1700000000+w.round, w.round, w.id, w.n)}
	body := make([]byte, 64+w.rng.IntN(4000))
	for i := range body {
		body[i] = 'a' + byte(w.rng.IntN(26))
		if i%72 == 71 {
			body[i] = '\n'
		}
	}
	msg := fmt.Appendf(nil, "From: crash@example.com\r\nSubject: %s\r\n\r\n%s\r\n", m.key, body)
	tmp := w.path(m, "tmp/"+m.key)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return w.fail("create "+tmp, err)
	}
	if _, err := f.Write(msg); err != nil {
		f.Close()
		return w.fail("write "+tmp, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return w.fail("fsync "+tmp, err)
	}
	if err := f.Close(); err != nil {
		return w.fail("close "+tmp, err)
	}
	w.born = append(w.born, m)
	if err := os.Rename(tmp, w.path(m, "new/"+m.key)); err != nil {
		m.cut, m.maybe = true, "new/"+m.key
		w.stats.cut++
		return w.fail("deliver "+m.key, err)
	}
	m.acked = "new/" + m.key
	w.owned = append(w.owned, m)
	w.stats.delivered++
	return nil
}

// crashNextName is the flag rename the test makes: new/K -> cur/K:2,S ->
// cur/K:2,FS -> cur/K:2,FRS -> cur/K:2,S -> ...
func crashNextName(name string) string {
	sub, rest, _ := strings.Cut(name, "/")
	key, info, _ := strings.Cut(rest, ":")
	if sub == "new" {
		return "cur/" + key + ":2,S"
	}
	next := map[string]string{"2,S": "2,FS", "2,FS": "2,FRS", "2,FRS": "2,S"}[info]
	if next == "" {
		next = "2,S"
	}
	return "cur/" + key + ":" + next
}

func (w *crashWorker) rename() error {
	m := w.owned[w.rng.IntN(len(w.owned))]
	to := crashNextName(m.acked)
	if err := os.Rename(w.path(m, m.acked), w.path(m, to)); err != nil {
		m.cut, m.maybe = true, to
		w.stats.cut++
		return w.fail("rename "+m.acked+" -> "+to+" in "+m.mbox, err)
	}
	m.acked = to
	w.stats.renamed++
	return nil
}

func (w *crashWorker) expunge() error {
	i := w.rng.IntN(len(w.owned))
	m := w.owned[i]
	if err := syscall.Unlink(w.path(m, m.acked)); err != nil {
		m.cut, m.maybe = true, ""
		w.stats.cut++
		return w.fail("unlink "+m.acked+" in "+m.mbox, err)
	}
	m.acked, m.expunged = "", true
	w.owned = append(w.owned[:i], w.owned[i+1:]...)
	w.stats.expunged++
	return nil
}

// crashChecker holds what the test knows across rounds.
type crashChecker struct {
	t       *testing.T
	store   string
	backing string
	msgs    []*crashMsg         // messages that may be on disk
	dropped map[crashKey]string // messages that must never come back, and why
	lastSeq uint64
}

// live returns the messages that were on disk at the last verify.
func (c *crashChecker) live() []*crashMsg {
	var out []*crashMsg
	for _, m := range c.msgs {
		if m.acked != "" {
			out = append(out, m)
		}
	}
	return out
}

// crashDisk is a walk of the backing tree.
type crashDisk struct {
	mailboxes map[string]bool
	files     map[crashKey]string // message -> "new/K" or "cur/K:2,FS"
	// staged lists mailfs's own scratch files (".mailfs-*") in tmp/: an
	// unlink that a kill cut leaves its file there. Shown on failure.
	staged []string
}

// crashState is one message as the journal or the disk says it is.
type crashState struct{ sub, flags string }

func (s crashState) String() string { return s.sub + " [" + s.flags + "]" }

// verify checks the store (through p's daemon when p is not nil, else
// offline) against what the workers were told, and then adopts the disk's
// state as the new truth for the next round.
func (c *crashChecker) verify(p *mailfsProc, when string) {
	t := c.t
	t.Helper()
	var problems []string
	report := func(format string, a ...any) {
		problems = append(problems, fmt.Sprintf(format, a...))
	}
	disk := c.walk(report)

	// (a) Acknowledged operations survived; nothing else appeared.
	tracked := map[crashKey]bool{}
	for _, m := range c.msgs {
		k := crashKey{m.mbox, m.key}
		tracked[k] = true
		got := disk.files[k]
		switch {
		case got == m.acked:
		case m.cut && got == m.maybe:
		case m.expunged:
			report("%s/%s: expunge was acknowledged, yet it is on disk as %s", m.mbox, m.key, got)
		case m.acked == "":
			report("%s/%s: never acknowledged, found as %s (cut op would have made %q)", m.mbox, m.key, got, m.maybe)
		case got == "":
			report("%s/%s: acknowledged as %s, gone from disk (cut op: %v, would have made %q)", m.mbox, m.key, m.acked, m.cut, m.maybe)
		default:
			report("%s/%s: acknowledged as %s, found as %s (cut op: %v, would have made %q)", m.mbox, m.key, m.acked, got, m.cut, m.maybe)
		}
	}
	for k, name := range disk.files {
		if tracked[k] {
			continue
		}
		if why, ok := c.dropped[k]; ok {
			report("%s/%s: came back as %s after it was %s", k.mbox, k.key, name, why)
		} else {
			report("%s/%s: on disk as %s, but the test never delivered it", k.mbox, k.key, name)
		}
	}

	// (b) The journal is dense: seqs 1..N, no gap, no duplicate.
	ops := journalOps(t, c.store)
	sort.SliceStable(ops, func(i, j int) bool { return ops[i].Seq < ops[j].Seq })
	for i, op := range ops {
		if op.Seq != uint64(i+1) {
			report("journal: op #%d has seq %d, want %d (gap or duplicate): %+v", i+1, op.Seq, i+1, op)
			break
		}
	}
	if uint64(len(ops)) < c.lastSeq {
		report("journal shrank: %d ops, %d before", len(ops), c.lastSeq)
	}

	// (c) The journal, folded, is the tree; status counts the tree.
	model, mboxes := crashFold(ops, report)
	for mb := range disk.mailboxes {
		if !mboxes[mb] {
			report("mailbox %s is on disk but not in the journal", mb)
		}
	}
	for mb := range mboxes {
		if !disk.mailboxes[mb] {
			report("mailbox %s is in the journal but not on disk", mb)
		}
	}
	for k, want := range model {
		name, ok := disk.files[k]
		if !ok {
			report("%s/%s: the journal has it as %v, the disk does not have it", k.mbox, k.key, want)
			continue
		}
		if got := crashStateOf(name); got != want {
			report("%s/%s: the journal has it as %v, the disk as %s", k.mbox, k.key, want, name)
		}
	}
	for k, name := range disk.files {
		if _, ok := model[k]; !ok {
			report("%s/%s: on disk as %s, not in the journal", k.mbox, k.key, name)
		}
	}
	node, _ := statusJSON(t, c.store)["node"].(map[string]any)
	if n, ok := node["messages"].(float64); !ok || int(n) != len(disk.files) {
		report("status: messages = %v, the disk has %d message files", node["messages"], len(disk.files))
	}
	if n, ok := node["mailboxes"].(float64); !ok || int(n) != len(disk.mailboxes) {
		report("status: mailboxes = %v, the disk has %d mailboxes", node["mailboxes"], len(disk.mailboxes))
	}
	if n, ok := node["journal_seq"].(float64); !ok || uint64(n) != uint64(len(ops)) {
		report("status: journal_seq = %v, the journal has %d ops", node["journal_seq"], len(ops))
	}

	if len(problems) > 0 {
		const limit = 40
		more := ""
		if len(problems) > limit {
			more = fmt.Sprintf("\n... and %d more", len(problems)-limit)
			problems = problems[:limit]
		}
		log := ""
		if len(disk.staged) > 0 {
			log = "\nmailfs scratch files in tmp/:\n" + strings.Join(disk.staged, "\n")
		}
		if p != nil {
			log += "\nlog of the remounted daemon:\n" + crashTail(p.Log(), 60)
		}
		t.Fatalf("%s: %d problems:\n%s%s%s", when, len(problems), strings.Join(problems, "\n"), more, log)
	}
	t.Logf("%s: ok: %d messages in %d mailboxes, journal 1..%d", when, len(disk.files), len(disk.mailboxes), len(ops))
	c.lastSeq = uint64(len(ops))

	// The disk is now the truth: cut operations are settled either way.
	kept := c.msgs[:0]
	for _, m := range c.msgs {
		k := crashKey{m.mbox, m.key}
		m.acked, m.cut, m.maybe = disk.files[k], false, ""
		if m.acked != "" {
			kept = append(kept, m)
			continue
		}
		if m.expunged {
			c.dropped[k] = "expunged"
		} else {
			c.dropped[k] = "gone after a cut operation"
		}
	}
	c.msgs = kept
}

// walk lists the mailboxes (directories with cur/) and the message files
// in their new/ and cur/ of the backing tree. tmp/ is ignored.
func (c *crashChecker) walk(report func(string, ...any)) crashDisk {
	d := crashDisk{mailboxes: map[string]bool{}, files: map[crashKey]string{}}
	err := filepath.WalkDir(c.backing, func(p string, e os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !e.IsDir() {
			return nil
		}
		switch e.Name() {
		case "cur", "new", "tmp":
			return filepath.SkipDir
		}
		if fi, err := os.Stat(filepath.Join(p, "cur")); err != nil || !fi.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(c.backing, p)
		mb := filepath.ToSlash(rel)
		d.mailboxes[mb] = true
		if entries, err := os.ReadDir(filepath.Join(p, "tmp")); err == nil {
			for _, f := range entries {
				if strings.HasPrefix(f.Name(), ".mailfs-") {
					info := ""
					if fi, err := f.Info(); err == nil {
						info = fmt.Sprintf(" (%d bytes, mtime %s)", fi.Size(), fi.ModTime().Format(time.RFC3339Nano))
					}
					if b, err := os.ReadFile(filepath.Join(p, "tmp", f.Name())); err == nil {
						if _, subj, ok := strings.Cut(string(b), "Subject: "); ok {
							subj, _, _ = strings.Cut(subj, "\r\n")
							info += " holding " + subj
						}
					}
					d.staged = append(d.staged, mb+"/tmp/"+f.Name()+info)
				}
			}
		}
		for _, sub := range []string{"new", "cur"} {
			entries, err := os.ReadDir(filepath.Join(p, sub))
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return err
			}
			for _, f := range entries {
				if !f.Type().IsRegular() {
					report("%s/%s/%s: not a regular file", mb, sub, f.Name())
					continue
				}
				name, err := maildir.ParseName(f.Name())
				if err != nil {
					report("%s/%s/%s: not a message name: %v", mb, sub, f.Name(), err)
					continue
				}
				k := crashKey{mb, name.Base}
				if prev, dup := d.files[k]; dup {
					report("%s/%s: on disk twice, as %s and %s/%s", mb, name.Base, prev, sub, f.Name())
				}
				d.files[k] = sub + "/" + f.Name()
			}
		}
		return nil
	})
	if err != nil {
		c.t.Fatalf("walking %s: %v", c.backing, err)
	}
	return d
}

// crashLetters maps Maildir flag letters to the names the journal carries.
var crashLetters = map[byte]string{'D': `\Draft`, 'F': `\Flagged`, 'P': `$Forwarded`, 'R': `\Answered`, 'S': `\Seen`, 'T': `\Deleted`}

// crashStateOf is the state a file name ("cur/K:2,FS") stands for.
func crashStateOf(name string) crashState {
	sub, rest, _ := strings.Cut(name, "/")
	var flags []string
	if _, info, ok := strings.Cut(rest, ":"); ok && strings.HasPrefix(info, "2,") {
		for i := 2; i < len(info); i++ {
			f, ok := crashLetters[info[i]]
			if !ok {
				f = maildir.UnknownLetterPrefix + info[i:i+1]
			}
			flags = append(flags, f)
		}
	}
	return crashState{sub: sub, flags: crashFlags(flags)}
}

func crashFlags(f []string) string {
	f = append([]string(nil), f...)
	sort.Strings(f)
	out := f[:0]
	for i, s := range f {
		if i == 0 || s != f[i-1] {
			out = append(out, s)
		}
	}
	return strings.Join(out, " ")
}

// crashFold replays the journal's mailbox and message ops into a model:
// (mailbox path, key) -> (sub, flags), and the set of mailbox paths.
func crashFold(ops []jop, report func(string, ...any)) (map[crashKey]crashState, map[string]bool) {
	model := map[crashKey]crashState{}
	mboxes := map[string]bool{}
	for _, op := range ops {
		k := crashKey{op.Path, op.Key}
		st := crashState{sub: op.Sub, flags: crashFlags(op.Flags)}
		switch op.Kind {
		case "MailboxCreate":
			if mboxes[op.Path] {
				report("journal seq %d: MailboxCreate of %s, which exists", op.Seq, op.Path)
			}
			mboxes[op.Path] = true
		case "MailboxDelete":
			delete(mboxes, op.Path)
			for mk := range model {
				if mk.mbox == op.Path {
					delete(model, mk)
				}
			}
		case "MailboxRename":
			delete(mboxes, op.Path)
			mboxes[op.NewPath] = true
			for mk, v := range model {
				if mk.mbox == op.Path {
					delete(model, mk)
					model[crashKey{op.NewPath, mk.key}] = v
				}
			}
		case "MessageAdd":
			if _, ok := model[k]; ok {
				report("journal seq %d: MessageAdd of %s/%s, which is already there", op.Seq, op.Path, op.Key)
			}
			model[k] = st
		case "MessageFlags":
			if _, ok := model[k]; !ok {
				report("journal seq %d: MessageFlags of %s/%s, which is not there", op.Seq, op.Path, op.Key)
			}
			model[k] = st
		case "MessageMove":
			if _, ok := model[k]; !ok {
				report("journal seq %d: MessageMove of %s/%s, which is not there", op.Seq, op.Path, op.Key)
			}
			delete(model, k)
			nk := crashKey{op.NewPath, op.Key}
			if op.NewKey != "" {
				nk.key = op.NewKey
			}
			model[nk] = st
		case "MessageExpunge":
			if _, ok := model[k]; !ok {
				report("journal seq %d: MessageExpunge of %s/%s, which is not there", op.Seq, op.Path, op.Key)
			}
			delete(model, k)
		}
	}
	return model, mboxes
}

func crashTail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// crashNoMounts fails t if anything is still mounted under dir (findmnt).
func crashNoMounts(t *testing.T, dir string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "findmnt", "-rn", "-o", "TARGET").Output()
	if err != nil {
		t.Errorf("findmnt: %v", err)
		return
	}
	for _, target := range strings.Split(string(out), "\n") {
		// findmnt -r escapes blanks as \x20; our temp dirs have none.
		if target == dir || strings.HasPrefix(target, dir+"/") {
			t.Errorf("leaked mount: %s", target)
		}
	}
}
