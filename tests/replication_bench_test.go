package tests

// TestReplicationBenchmark: mailfs replication beside `doveadm sync`
// (dsync, Dovecot 2.3 as packaged by Debian) on the same generated corpus,
// printed as one table with the design §10 targets. Opt-in:
//
//	MAILFS_REPL_BENCH=1 go test -count=1 -timeout 30m -run TestReplicationBenchmark -v ./tests/
//
// MAILFS_REPL_BENCH_SCALE=F (0 < F <= 1, default 1) shrinks the mailboxes
// (10k, 1k and 50k messages at full scale) and the latency run (20 s at
// full scale; MAILFS_REPL_BENCH_LATENCY=DUR sets it). MAILFS_REPL_BENCH_ONLY=first
// runs the first sync alone (both tools), for profiling it; with
// MAILFS_TEST_LOG_DIR set, the daemons' logs are written there.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

// rbMailbox is where every benchmark mailbox lives in the mailfs trees, as
// Dovecot's %d/%n/Maildir would put user bench@example.com. The dsync
// trees have the mailbox at their root (mail_location = maildir:DIR).
const rbMailbox = "example.com/bench/Maildir"

// rbFlagCycle gives message i the flags of a lived-in mailbox.
var rbFlagCycle = [...]string{"S", "S", "S", "RS", "FS", "", "ST", "FRS"}

func TestReplicationBenchmark(t *testing.T) {
	if os.Getenv("MAILFS_REPL_BENCH") != "1" {
		t.Skip("replication benchmark beside doveadm sync (several minutes, GBs of disk); run it with " +
			"MAILFS_REPL_BENCH=1 go test -count=1 -timeout 30m -run TestReplicationBenchmark -v ./tests/ " +
			"(MAILFS_REPL_BENCH_SCALE=0.1 for a quick run)")
	}
	requireFUSE(t)
	if os.Geteuid() != 0 {
		t.Fatal("the replication benchmark needs root (FUSE mounts, doveadm as nobody)")
	}
	if _, err := exec.LookPath("doveadm"); err != nil {
		t.Fatalf("doveadm not found (apt-get install -y dovecot-core): %v", err)
	}
	scale := 1.0
	if v := os.Getenv("MAILFS_REPL_BENCH_SCALE"); v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f <= 0 || f > 1 {
			t.Fatalf("MAILFS_REPL_BENCH_SCALE=%q: want a number in (0, 1]", v)
		}
		scale = f
	}
	sized := func(n, least int) int { return max(least, int(math.Round(float64(n)*scale))) }
	nFirst, nSmall, nLarge := sized(10000, 500), sized(1000, 300), sized(50000, 1000)
	latencyFor := time.Duration(max(5, int(math.Round(20*scale)))) * time.Second
	if v := os.Getenv("MAILFS_REPL_BENCH_LATENCY"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Second {
			t.Fatalf("MAILFS_REPL_BENCH_LATENCY=%q: want a duration of at least 1s", v)
		}
		latencyFor = d.Truncate(time.Second)
	}

	rbUseReleaseBinary(t)
	b := &rbBench{t: t}
	b.uid, b.gid = dovecotMailUser(t)
	started := time.Now()
	loadBefore := rbLoadAvg()

	first := b.firstSync(nFirst)
	if only := os.Getenv("MAILFS_REPL_BENCH_ONLY"); only == "first" {
		t.Logf("first sync of %d msgs (%s): doveadm sync %.2f s, mailfs %.2f s = %.2fx; %.2fx of raw on the wire; "+
			"a file create cost %v before dsync's, %v before mailfs's",
			nFirst, rbHuman(first.raw), first.dsync.Seconds(), first.mailfs.Seconds(),
			first.mailfs.Seconds()/first.dsync.Seconds(), float64(first.wire)/float64(first.raw),
			first.createCost[0].Round(time.Microsecond), first.createCost[1].Round(time.Microsecond))
		return
	} else if only != "" {
		t.Fatalf("MAILFS_REPL_BENCH_ONLY=%q: want first", only)
	}
	small := b.incremental(nSmall, 2, true)
	lat := b.latency(small.pair, 50, latencyFor)
	small.pair.stop()
	large := b.incremental(nLarge, 3, false)
	large.pair.stop()

	var rows []rbRow
	rows = append(rows,
		rbRow{what: fmt.Sprintf("first sync, %d msgs (%s) to an empty peer [s]", nFirst, rbHuman(first.raw)),
			dsync: first.dsync.Seconds(), mailfs: first.mailfs.Seconds(), goal: "<= 0.25x dsync", check: rbRatioAtMost(0.25)},
		rbRow{what: fmt.Sprintf("incremental +%d new, %d flags, %d-msg mailbox [s, median of %d]", small.added, small.flagged, nSmall, rbRounds),
			dsync: small.dsync.Seconds(), mailfs: small.mailfs.Seconds(), goal: "-"},
		rbRow{what: fmt.Sprintf("incremental +%d new, %d flags, %d-msg mailbox [s, median of %d]", large.added, large.flagged, nLarge, rbRounds),
			dsync: large.dsync.Seconds(), mailfs: large.mailfs.Seconds(), goal: "<= 0.1x dsync", check: rbRatioAtMost(0.1)},
		rbRow{what: fmt.Sprintf("incremental time, %d-msg / %d-msg mailbox [x]", nLarge, nSmall),
			dsync: large.dsync.Seconds() / small.dsync.Seconds(), mailfs: large.mailfs.Seconds() / small.mailfs.Seconds(),
			goal: "mailfs <= 1.2x", check: rbMailfsAtMost(1.2), noRatio: true},
		rbRow{what: fmt.Sprintf("sync with no changes, %d-msg mailbox [s]", nLarge),
			dsync: large.dsyncIdle.Seconds(), mailfs: large.mailfsIdle.Seconds(), goal: "-"},
		rbRow{what: fmt.Sprintf("first sync, %d msgs (%s) to an empty peer [s]", nLarge, rbHuman(large.raw)),
			dsync: math.NaN(), mailfs: large.first.Seconds(), goal: "- (dsync not run: primed)"},
		rbRow{what: fmt.Sprintf("delivery-to-visible on peer, p50, %d/s for %v [ms]", lat.rate, latencyFor),
			dsync: math.NaN(), mailfs: rbMs(lat.p50), goal: "-"},
		rbRow{what: fmt.Sprintf("delivery-to-visible on peer, p99, %d/s for %v [ms]", lat.rate, latencyFor),
			dsync: math.NaN(), mailfs: rbMs(lat.p99), goal: "mailfs <= 1000 ms", check: rbMailfsAtMost(1000)},
		rbRow{what: fmt.Sprintf("bytes on the wire / raw, first sync of %d msgs [x]", nSmall),
			dsync: float64(small.dsyncWire) / float64(small.raw), mailfs: float64(small.mailfsWire) / float64(small.raw),
			goal: "mailfs <= 0.6x", check: rbMailfsAtMost(0.6)},
		rbRow{what: fmt.Sprintf("bytes on the wire / raw, first sync of %d msgs [x]", nFirst),
			dsync: math.NaN(), mailfs: float64(first.wire) / float64(first.raw), goal: "mailfs <= 0.6x", check: rbMailfsAtMost(0.6)},
		rbRow{what: fmt.Sprintf("bytes on the wire / raw, %d deliveries at %d/s [x]", lat.n, lat.rate),
			dsync: math.NaN(), mailfs: float64(lat.wire) / float64(lat.raw), goal: "mailfs <= 0.6x", check: rbMailfsAtMost(0.6)},
	)
	table := rbTable(rows)
	notes := fmt.Sprintf(`corpus: %s
  zstd on each message alone (klauspost/compress as mailfs uses it) would make the %d-msg first-sync
  corpus %.2fx of raw at SpeedDefault (mailfs's ops level), %.2fx at SpeedBetterCompression.
first sync: dsync = one 'doveadm sync' (local, maildir:A -> maildir:B) after A's indexes were built;
  mailfs = 'pair join' + 'mailfs sync' on A, A's Maildir adopted with 'init --maildir' beforehand.
  Each started %v after the last deletes of the benchmark's; creating a file then cost %v (dsync's
  side) and %v (mailfs's), which swings both times from run to run (see rbQuiesce).
incremental, %d rounds (median shown) on both sides of each tool: 100 deliveries (tmp/, fsync, rename into
  new/; the same messages in both mailbox sizes, %s) and 200 flag renames in cur/, made on A first
  (untimed; mailfs: through A's mount with the link to B cut); timed: dsync = one 'doveadm sync';
  mailfs = restoring the link + 'mailfs sync' on A (returns when B has applied and acknowledged everything).
  The %d-msg dsync pair was primed with identical files and dovecot-uidlists plus one untimed 'doveadm sync'.
latency: deliveries through A's mount on a fixed schedule; from the final rename() on A to the name
  appearing (inotify) in B's mount; %d of %d seen; p90 %v, max %v.
bytes: mailfs = A's bytes_sent to B (TLS payload: segments, ops zstd'd, body chunks zstd'd when smaller); dsync =
  bytes written to 'doveadm dsync-server' over a pipe (its protocol, the same sync; %s back); raw = the
  messages' sizes. The %d-msg first sync with dsync over the pipe took %.1f s (not in the table).
total benchmark time %v; load average (1 min) %s at the start, %s at the end, on %d CPUs
  (anything else running on the machine skews every figure).`, first.corpusStats, nFirst, first.zstdDefault, first.zstdBetter,
		rbQuiet, first.createCost[0].Round(time.Microsecond), first.createCost[1].Round(time.Microsecond), rbRounds, small.addedSizes, nLarge, lat.seen, lat.n, lat.p90.Round(time.Millisecond), lat.max.Round(time.Millisecond),
		rbHuman(small.dsyncWireBack), nSmall, small.dsyncPipe.Seconds(), time.Since(started).Round(time.Second),
		loadBefore, rbLoadAvg(), runtime.NumCPU())
	t.Logf("\n%s\n%s", table, notes)
	fmt.Println(table)
	fmt.Println(notes)
}

// rbLoadAvg is the 1-minute load average.
func rbLoadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Fields(string(data))[0]
}

func rbMs(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// rbUseReleaseBinary points mailfsBin at a build without -race for the
// length of the test: timing a race-detector build says nothing.
func rbUseReleaseBinary(t *testing.T) {
	if os.Getenv("MAILFS_TEST_NORACE") != "" {
		return
	}
	bin := filepath.Join(t.TempDir(), "mailfs")
	out, err := exec.Command("go", "build", "-o", bin, "mailfs/cmd/mailfs").CombinedOutput()
	if err != nil {
		t.Fatalf("building mailfs without -race: %v\n%s", err, out)
	}
	old := mailfsBin
	mailfsBin = bin
	t.Cleanup(func() { mailfsBin = old })
}

// ---- the table ----

type rbRow struct {
	what          string
	dsync, mailfs float64 // NaN: not measured
	goal          string
	check         func(r rbRow) bool
	noRatio       bool // mailfs/dsync means nothing for the row
}

func rbRatioAtMost(x float64) func(rbRow) bool {
	return func(r rbRow) bool { return r.mailfs/r.dsync <= x }
}

func rbMailfsAtMost(x float64) func(rbRow) bool {
	return func(r rbRow) bool { return r.mailfs <= x }
}

func rbNum(v float64) string {
	switch {
	case math.IsNaN(v) || math.IsInf(v, 0):
		return "-"
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
}

func rbTable(rows []rbRow) string {
	head := []string{"workload", "doveadm sync", "mailfs", "mailfs/dsync", "target", "ok/MISS"}
	cells := [][]string{head}
	for _, r := range rows {
		verdict := "-"
		if r.check != nil {
			verdict = "MISS"
			if r.check(r) {
				verdict = "ok"
			}
		}
		ratio := "-"
		if !math.IsNaN(r.dsync) && !math.IsNaN(r.mailfs) && !r.noRatio {
			ratio = rbNum(r.mailfs/r.dsync) + "x"
		}
		cells = append(cells, []string{r.what, rbNum(r.dsync), rbNum(r.mailfs), ratio, r.goal, verdict})
	}
	width := make([]int, len(head))
	for _, c := range cells {
		for i, s := range c {
			width[i] = max(width[i], len(s))
		}
	}
	var sb strings.Builder
	for n, c := range cells {
		for i, s := range c {
			if i > 0 {
				sb.WriteString(" | ")
			}
			if i == 0 || i >= 4 {
				fmt.Fprintf(&sb, "%-*s", width[i], s)
			} else {
				fmt.Fprintf(&sb, "%*s", width[i], s)
			}
		}
		sb.WriteString("\n")
		if n == 0 {
			for i, w := range width {
				if i > 0 {
					sb.WriteString("-|-")
				}
				sb.WriteString(strings.Repeat("-", w))
			}
			sb.WriteString("\n")
		}
	}
	return strings.TrimRight(sb.String(), "\n")
}

func rbHuman(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// ---- the corpus ----

// rbMsg is one generated message: its Maildir base name, size and flags.
// Everything about message i of a corpus derives from (seed, i) alone.
type rbMsg struct {
	i     int
	seed  uint64
	base  string
	size  int64
	class int // 0 plain text, 1 small attachment, 2 large attachment
	flags string
}

func (m rbMsg) name() string { return m.base + ":2," + m.flags }

// rbCorpusMsg draws message i: sizes as fs/fsbench's corpus (median about
// 4 KiB, 7% with attachments of tens of KiB, 1% over 1 MiB), names like
// Dovecot's, flags from rbFlagCycle.
func rbCorpusMsg(seed uint64, i int) rbMsg {
	r := rand.New(rand.NewPCG(seed, uint64(i)))
	m := rbMsg{i: i, seed: seed, flags: rbFlagCycle[i%len(rbFlagCycle)]}
	u := r.Float64()
	switch {
	case u < 0.01:
		lo, hi := math.Log(1<<20+1), math.Log(6<<20)
		m.size, m.class = int64(math.Exp(lo+r.Float64()*(hi-lo))), 2
	case u < 0.08:
		m.size, m.class = min(max(int64(48<<10*math.Exp(r.NormFloat64())), 8<<10), 1<<20-1), 1
	default:
		m.size = min(max(int64(3.8*1024*math.Exp(0.6*r.NormFloat64())), 600), 256<<10)
	}
	m.base = fmt.Sprintf("%d.M%dP%dQ%d.rbench%d,S=%d", 1700000000+int64(i/50), (i%50)*20000+1, 4242, i, seed, m.size)
	return m
}

var rbWords = strings.Fields(`the of and to in is you that it he was for on are as with his they at be this have from
or one had by word but not what all were we when your can said there use an each which she do how their if will up
other about out many then them these so some her would make like him into time has look two more write go see number
no way could people my than first water been call who oil its now find long down day did get come made may part
meeting invoice report please thanks regards attached schedule project update review budget team customer order
delivery account support question answer monday friday tomorrow week month quarter server mail backup release`)

// body returns message m's bytes: RFC 5322 headers, then (plain) lines
// of words, which compress like text, or (attachments) a short text part
// and a base64 part of random bytes, which compresses like the compressed
// files people attach. Exactly m.size bytes.
func (m rbMsg) body() []byte {
	var b bytes.Buffer
	b.Grow(int(m.size) + 200)
	who := m.i % 997
	fmt.Fprintf(&b, "Return-Path: <sender%d@example.org>\nDelivered-To: bench@example.com\n"+
		"Received: from mx.example.org (mx.example.org [192.0.2.1])\n\tby mail.example.com with ESMTPS id %s\n"+
		"Message-ID: <%s@example.org>\nDate: Tue, 14 Nov 2023 22:13:20 +0000\n"+
		"From: Sender %d <sender%d@example.org>\nTo: Bench <bench@example.com>\nSubject: benchmark message %d\n"+
		"MIME-Version: 1.0\n", who, m.base, m.base, who, who, m.i)
	r := rand.New(rand.NewPCG(m.seed^0x626f6479, uint64(m.i)))
	text := func(n int) {
		line := 0
		for b.Len() < n {
			w := rbWords[r.IntN(len(rbWords))]
			if line+len(w) > 72 {
				b.WriteByte('\n')
				line = 0
			} else if line > 0 {
				b.WriteByte(' ')
				line++
			}
			b.WriteString(w)
			line += len(w)
		}
	}
	if m.class == 0 {
		b.WriteString("Content-Type: text/plain; charset=us-ascii\n\n")
		text(int(m.size))
	} else {
		b.WriteString("Content-Type: multipart/mixed; boundary=\"rb\"\n\n--rb\nContent-Type: text/plain\n\n")
		text(b.Len() + 600)
		b.WriteString("\n--rb\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n")
		var seed [32]byte
		binary.LittleEndian.PutUint64(seed[:], m.seed)
		binary.LittleEndian.PutUint64(seed[8:], uint64(m.i))
		cr := rand.NewChaCha8(seed)
		raw := make([]byte, 57)
		line := make([]byte, 76)
		for int64(b.Len()) < m.size {
			cr.Read(raw)
			base64.StdEncoding.Encode(line, raw)
			b.Write(line)
			b.WriteByte('\n')
		}
	}
	for int64(b.Len()) < m.size {
		b.WriteByte('\n')
	}
	return b.Bytes()[:m.size]
}

// rbCorpus is messages from..from+n-1 of one seed.
func rbCorpus(seed uint64, from, n int) []rbMsg {
	msgs := make([]rbMsg, n)
	for i := range msgs {
		msgs[i] = rbCorpusMsg(seed, from+i)
	}
	return msgs
}

func rbRaw(msgs []rbMsg) int64 {
	var n int64
	for _, m := range msgs {
		n += m.size
	}
	return n
}

func rbStats(msgs []rbMsg) string {
	sizes := make([]int64, len(msgs))
	over := 0
	for i, m := range msgs {
		sizes[i] = m.size
		if m.size > 1<<20 {
			over++
		}
	}
	slices.Sort(sizes)
	p := func(q float64) int64 { return sizes[int(q*float64(len(sizes)-1))] }
	return fmt.Sprintf("%d msgs, median %s, p90 %s, p99 %s, max %s, %.1f%% > 1 MiB, %s in all",
		len(msgs), rbHuman(p(0.5)), rbHuman(p(0.9)), rbHuman(p(0.99)), rbHuman(sizes[len(sizes)-1]),
		100*float64(over)/float64(len(msgs)), rbHuman(rbRaw(msgs)))
}

// rbZstdRatio is what zstd (klauspost/compress, at level) makes of the
// messages, each alone.
func rbZstdRatio(t *testing.T, msgs []rbMsg, level zstd.EncoderLevel) float64 {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(level))
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	var raw, comp int64
	var buf []byte
	for _, m := range msgs {
		body := m.body()
		buf = enc.EncodeAll(body, buf[:0])
		raw += int64(len(body))
		comp += int64(len(buf))
	}
	return float64(comp) / float64(raw)
}

// rbWriteMessages writes msgs into dir/cur (plain files, no fsync: the
// tree is a starting state, made durable by one sync(2) at the end),
// with a few writers.
func rbWriteMessages(t *testing.T, dir string, msgs []rbMsg) {
	t.Helper()
	for _, s := range []string{"cur", "new", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, s), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(msgs); i += 4 {
				if err := os.WriteFile(filepath.Join(dir, "cur", msgs[i].name()), msgs[i].body(), 0o600); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	unix.Sync()
}

// rbDeliver delivers m into the Maildir at dir as an MDA does: tmp/,
// fsync, rename into new/. It returns when the final rename started.
func rbDeliver(dir string, m rbMsg) (time.Time, error) {
	tmp := filepath.Join(dir, "tmp", m.base)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return time.Time{}, err
	}
	_, err = f.Write(m.body())
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return time.Time{}, err
	}
	at := time.Now()
	return at, os.Rename(tmp, filepath.Join(dir, "new", m.base))
}

// rbToggleF returns flags with F added or removed, letters sorted.
func rbToggleF(flags string) string {
	if strings.Contains(flags, "F") {
		return strings.ReplaceAll(flags, "F", "")
	}
	l := []byte(flags + "F")
	slices.Sort(l)
	return string(l)
}

// rbChanges is one incremental change set: deliveries and flag changes.
type rbChanges struct {
	added   []rbMsg
	flagged []rbMsg // with their new flags
	old     []rbMsg // the same messages with their flags before
}

// rbMakeChanges is round r's change set in a mailbox of msgs: the same
// new messages whatever the mailbox (so mailboxes of different sizes get
// the same work), and flag changes spread over the mailbox. msgs holds the
// flags the messages have before the round and is updated to the flags
// they have after it.
func rbMakeChanges(msgs []rbMsg, round, added, flagged int) rbChanges {
	c := rbChanges{added: rbCorpus(7, 1000000+1000*round, added)}
	flagged = min(flagged, len(msgs))
	for k := 0; k < flagged; k++ {
		i := (k*len(msgs)/flagged + round) % len(msgs)
		c.old = append(c.old, msgs[i])
		msgs[i].flags = rbToggleF(msgs[i].flags)
		c.flagged = append(c.flagged, msgs[i])
	}
	return c
}

// apply makes the changes in the Maildir at dir (a mount or a plain tree).
func (c rbChanges) apply(t *testing.T, dir string) {
	t.Helper()
	for _, m := range c.added {
		if _, err := rbDeliver(dir, m); err != nil {
			t.Fatalf("deliver into %s: %v", dir, err)
		}
	}
	for k, m := range c.flagged {
		if err := os.Rename(filepath.Join(dir, "cur", c.old[k].name()), filepath.Join(dir, "cur", m.name())); err != nil {
			t.Fatalf("flag change in %s: %v", dir, err)
		}
	}
}

// rbListing maps each message of the Maildir at dir, by base name, to
// "flags size" (the sub dir left out: a sync may move new/ to cur/).
func rbListing(t *testing.T, dir string, withSize bool) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, sub := range []string{"new", "cur"} {
		ents, err := os.ReadDir(filepath.Join(dir, sub))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			base, info, _ := strings.Cut(e.Name(), ":")
			v := strings.TrimPrefix(info, "2,")
			if withSize {
				fi, err := e.Info()
				if err != nil {
					t.Fatal(err)
				}
				v += " " + strconv.FormatInt(fi.Size(), 10)
			}
			out[base] = v
		}
	}
	return out
}

// rbFlagCounts counts messages per flag letter; dsync names its copies
// itself, so only counts can be compared across a dsync pair.
func rbFlagCounts(t *testing.T, dir string) string {
	counts := map[rune]int{}
	n := 0
	for _, v := range rbListing(t, dir, false) {
		n++
		for _, c := range v {
			counts[c]++
		}
	}
	return fmt.Sprintf("%d msgs, flags %v", n, counts)
}

func rbSameListing(t *testing.T, what string, a, b map[string]string) {
	t.Helper()
	var diffs []string
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			diffs = append(diffs, fmt.Sprintf("%s: %q vs %q", k, v, w))
		}
	}
	for k, w := range b {
		if _, ok := a[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: only on the peer (%q)", k, w))
		}
	}
	if len(diffs) > 0 {
		sort.Strings(diffs)
		t.Fatalf("%s: %d messages differ (of %d/%d), e.g.:\n%s", what, len(diffs), len(a), len(b),
			strings.Join(diffs[:min(10, len(diffs))], "\n"))
	}
}

// ---- doveadm sync ----

type rbBench struct {
	t        *testing.T
	uid, gid int
}

// rbDsync is one dsync user: its Maildir (the INBOX at the root) and index
// dirs, and a doveadm configuration whose mail_location is A.
type rbDsync struct {
	t          *testing.T
	dir        string
	a, b       string // Maildirs
	aIdx, bIdx string
	conf, home string
	uid, gid   int
}

func (bn *rbBench) newDsync() *rbDsync {
	t := bn.t
	dir := t.TempDir()
	d := &rbDsync{t: t, dir: dir, a: filepath.Join(dir, "A"), b: filepath.Join(dir, "B"),
		aIdx: filepath.Join(dir, "idx", "A"), bIdx: filepath.Join(dir, "idx", "B"),
		conf: filepath.Join(dir, "dovecot.conf"), home: filepath.Join(dir, "home"), uid: bn.uid, gid: bn.gid}
	for _, p := range []string{d.a, d.b, d.aIdx, d.bIdx, d.home} {
		if err := os.MkdirAll(p, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// doveadm runs as the mail user without an auth service (no -u): the
	// user is the process's, mail_location is A, the other side a
	// location or a dsync-server command. Everything else is Dovecot's
	// default (mail_fsync = optimized: every saved message is fsync'd).
	conf := fmt.Sprintf(`base_dir = %[1]s/run
state_dir = %[1]s/state
first_valid_uid = %[2]d
first_valid_gid = %[3]d
mail_location = maildir:%[4]s:INDEX=%[5]s
namespace inbox {
  inbox = yes
}
`, dir, d.uid, d.gid, d.a, d.aIdx)
	if err := os.WriteFile(d.conf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	dovecotMakeTraversable(t, dir, d.uid)
	return d
}

// chown gives the whole dsync dir to the mail user.
func (d *rbDsync) chown() {
	if err := dovecotChownTree(d.dir, d.uid, d.gid); err != nil {
		d.t.Fatal(err)
	}
}

// doveadm runs doveadm as the mail user and returns how long it took.
func (d *rbDsync) doveadm(args ...string) time.Duration {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "doveadm", append([]string{"-c", d.conf}, args...)...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + d.home, "USER=bench"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(d.uid), Gid: uint32(d.gid)}}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	elapsed := time.Since(start)
	if err != nil || strings.Contains(out.String(), "Error:") {
		d.t.Fatalf("doveadm %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	return elapsed
}

func (d *rbDsync) syncToB() time.Duration {
	return d.doveadm("sync", "maildir:"+d.b+":INDEX="+d.bIdx)
}

// index builds A's indexes, as a server that has been serving the mailbox
// has them.
func (d *rbDsync) index() time.Duration {
	return d.doveadm("fetch", "uid guid flags", "mailbox", "INBOX", "all")
}

// syncToBPipe runs the sync with B behind 'doveadm dsync-server' on a pipe
// and returns the time and the bytes sent to it and back.
func (d *rbDsync) syncToBPipe() (time.Duration, int64, int64) {
	in, back := filepath.Join(d.home, "to-server.bytes"), filepath.Join(d.home, "from-server.bytes")
	server := fmt.Sprintf("tee >(wc -c > %s) | doveadm -c %s -o mail_location=maildir:%s:INDEX=%s dsync-server | tee >(wc -c > %s)",
		in, d.conf, d.b, d.bIdx, back)
	elapsed := d.doveadm("sync", "/bin/bash", "-c", server)
	read := func(p string) int64 {
		for i := 0; i < 100; i++ { // the wc's finish just after
			data, err := os.ReadFile(p)
			if n, err2 := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64); err == nil && err2 == nil {
				return n
			}
			time.Sleep(20 * time.Millisecond)
		}
		d.t.Fatalf("no byte count in %s", p)
		return 0
	}
	return elapsed, read(in), read(back)
}

// ---- mailfs pairs ----

// rbForwarder is a TCP forwarder that can be cut and restored: the link
// A uses to push to B.
type rbForwarder struct {
	t      *testing.T
	addr   string
	target string
	mu     sync.Mutex
	ln     net.Listener
	conns  map[net.Conn]bool
}

func rbNewForwarder(t *testing.T, target string) *rbForwarder {
	f := &rbForwarder{t: t, addr: freeAddr(t), target: target, conns: map[net.Conn]bool{}}
	f.heal()
	t.Cleanup(f.cut)
	return f
}

func (f *rbForwarder) heal() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ln != nil {
		return
	}
	var err error
	for i := 0; i < 50; i++ {
		if f.ln, err = net.Listen("tcp", f.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		f.t.Fatalf("forwarder: %v", err)
	}
	go f.serve(f.ln)
}

func (f *rbForwarder) cut() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ln != nil {
		f.ln.Close()
		f.ln = nil
	}
	for c := range f.conns {
		c.Close()
	}
	clear(f.conns)
}

func (f *rbForwarder) serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go f.pipe(ln, c)
	}
}

func (f *rbForwarder) pipe(ln net.Listener, c net.Conn) {
	d, err := net.DialTimeout("tcp", f.target, 5*time.Second)
	if err != nil {
		c.Close()
		return
	}
	f.mu.Lock()
	if f.ln != ln { // cut meanwhile
		f.mu.Unlock()
		c.Close()
		d.Close()
		return
	}
	f.conns[c], f.conns[d] = true, true
	f.mu.Unlock()
	done := make(chan struct{})
	go func() {
		io.Copy(d, c)
		d.(*net.TCPConn).CloseWrite()
		close(done)
	}()
	io.Copy(c, d)
	c.(*net.TCPConn).CloseWrite()
	<-done
	c.Close()
	d.Close()
	f.mu.Lock()
	delete(f.conns, c)
	delete(f.conns, d)
	f.mu.Unlock()
}

// rbPair is two mounted mailfs nodes; a pushes to b through fwd.
type rbPair struct {
	t    *testing.T
	a, b *node
	fwd  *rbForwarder
}

// mbox is the benchmark mailbox's directory on n's mount.
func (p *rbPair) mbox(n *node) string { return filepath.Join(n.Mnt, rbMailbox) }

func (p *rbPair) stop() {
	p.b.Stop()
	p.a.Stop()
}

// rbStartPair inits node A adopting the Maildir tree at maildirA, and an
// empty node B, and mounts both (not paired yet).
func (bn *rbBench) startPair(maildirA string) *rbPair {
	t := bn.t
	p := &rbPair{t: t}
	for i, name := range []string{"rbencha", "rbenchb"} {
		store, mnt := newStoreDirs(t)
		var extra []string
		if i == 0 {
			extra = []string{"--maildir", maildirA}
		}
		start := time.Now()
		initNode(t, store, name, extra...)
		if i == 0 {
			t.Logf("mailfs init --maildir (adopting A's tree): %v", time.Since(start).Round(time.Millisecond))
		}
		addr := freeAddr(t)
		start = time.Now()
		proc := startMailfs(t, store, mnt, "--listen", addr)
		t.Logf("mailfs mount %s ready in %v", name, time.Since(start).Round(time.Millisecond))
		n := &node{mailfsProc: proc, Name: name, Addr: addr, ID: nodeID(t, statusJSON(t, store))}
		if i == 0 {
			p.a = n
		} else {
			p.b = n
		}
	}
	p.fwd = rbNewForwarder(t, p.b.Addr)
	return p
}

// pair pairs A (inviter) and B, A pushing to B through the forwarder.
func (p *rbPair) pair() {
	t := p.t
	out, errs, code := runMailfs(t, "pair", "invite", "--store", p.a.Store)
	if code != 0 {
		t.Fatalf("pair invite: exit %d: %s", code, errs)
	}
	if out, errs, code := runMailfs(t, "pair", "join", "--store", p.b.Store, "--address", p.fwd.addr, strings.TrimSpace(out)); code != 0 {
		t.Fatalf("pair join: exit %d: %s%s", code, out, errs)
	}
}

// sync runs `mailfs sync` on A: it returns once B acknowledged every op A
// journaled before the call.
func (p *rbPair) sync() {
	t := p.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, mailfsBin, "sync", "--store", p.a.Store, "--timeout", "15m")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("mailfs sync on A: %v: %s\nA:\n%s\nB:\n%s", err, out, tail(p.a.Log(), 30), tail(p.b.Log(), 30))
	}
}

// peerOfA is A's status entry for B.
func (p *rbPair) peerOfA() map[string]any {
	for _, e := range statusPeers(p.t, statusJSON(p.t, p.a.Store)) {
		if e["id"] == p.b.ID {
			return e
		}
	}
	p.t.Fatalf("A does not list B as a peer")
	return nil
}

func (p *rbPair) bytesSent() int64 {
	v, _ := p.peerOfA()["bytes_sent"].(float64)
	return int64(v)
}

// ---- the workloads ----

type rbFirstResult struct {
	dsync, mailfs time.Duration
	raw, wire     int64
	zstdDefault   float64
	zstdBetter    float64
	corpusStats   string
	// createCost is what creating a file cost just before dsync's and
	// mailfs's timed run (rbQuiesce).
	createCost [2]time.Duration
}

// rbQuiesce gives both tools' timed first syncs the same start, and
// returns what creating a file in dir (beside the receiving side's tree)
// cost then. Creating a file on these VMs costs from 35 us to 2 ms of CPU,
// spent in ext4's inode allocator (find_inode_bit, recently_deleted,
// ext4_get_group_desc: this ext4 has no journal), more so for minutes after
// many deletes; doveadm sync frees an inode for every message it copies
// (measured with the ext4_free_inode tracepoint; mailfs frees none), and
// both tools create one per message. The pause keeps the tool run second
// from paying for the first one's deletes; the cost is printed because
// it swings both tools' times from run to run. The probe files stay
// until the end (a delete would add to what later creates skip).
func rbQuiesce(t *testing.T, dir string) time.Duration {
	t.Helper()
	t.Logf("waiting %v for the file system to settle after earlier deletes", rbQuiet)
	time.Sleep(rbQuiet)
	probe, err := os.MkdirTemp(dir, "create-cost-")
	if err != nil {
		t.Fatal(err)
	}
	const files = 200
	start := time.Now()
	for i := range files {
		f, err := os.Create(filepath.Join(probe, strconv.Itoa(i)))
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	return time.Since(start) / files
}

const rbQuiet = 31 * time.Second

// firstSync: n messages on A, nothing on B; one sync.
func (bn *rbBench) firstSync(n int) rbFirstResult {
	t := bn.t
	msgs := rbCorpus(1, 0, n)
	res := rbFirstResult{raw: rbRaw(msgs), corpusStats: rbStats(msgs)}
	t.Logf("first sync corpus: %s", res.corpusStats)

	d := bn.newDsync()
	rbWriteMessages(t, d.a, msgs)
	d.chown()
	t.Logf("doveadm fetch (builds A's indexes), %d msgs: %v", n, d.index())
	res.createCost[0] = rbQuiesce(t, d.dir)
	res.dsync = d.syncToB()
	if got, want := rbFlagCounts(t, d.b), rbFlagCounts(t, d.a); got != want {
		t.Fatalf("dsync first sync: B has %s, A %s", got, want)
	}
	t.Logf("doveadm sync, first sync of %d: %v", n, res.dsync)

	md := filepath.Join(t.TempDir(), "vmail")
	rbWriteMessages(t, filepath.Join(md, rbMailbox), msgs)
	p := bn.startPair(md)
	unix.Sync()
	res.createCost[1] = rbQuiesce(t, filepath.Dir(p.b.Store))
	start := time.Now()
	p.pair()
	p.sync()
	res.mailfs = time.Since(start)
	res.wire = p.bytesSent()
	t.Logf("mailfs first sync of %d: %v, %s sent for %s raw", n, res.mailfs, rbHuman(res.wire), rbHuman(res.raw))
	rbSameListing(t, "mailfs first sync", rbListing(t, p.mbox(p.a), true), rbListing(t, p.mbox(p.b), true))
	rbSameBodies(t, p, msgs[:min(len(msgs), 200)])
	p.stop()
	dumpLogsAs(t, "-first", []*node{p.a, p.b})
	res.zstdDefault = rbZstdRatio(t, msgs, zstd.SpeedDefault)
	res.zstdBetter = rbZstdRatio(t, msgs, zstd.SpeedBetterCompression)
	return res
}

// rbSameBodies checks that B's copies of msgs have their bytes.
func rbSameBodies(t *testing.T, p *rbPair, msgs []rbMsg) {
	t.Helper()
	for _, m := range msgs {
		var got []byte
		var err error
		for _, name := range []string{"cur/" + m.name(), "new/" + m.base} {
			if got, err = os.ReadFile(filepath.Join(p.mbox(p.b), name)); err == nil {
				break
			}
		}
		if err != nil {
			t.Fatalf("B lacks %s: %v", m.base, err)
		}
		if !bytes.Equal(got, m.body()) {
			t.Fatalf("B's copy of %s differs (%d bytes, want %d)", m.base, len(got), m.size)
		}
	}
}

type rbIncResult struct {
	dsync, mailfs  time.Duration // medians over the rounds
	first          time.Duration // mailfs's first sync of the mailbox
	added, flagged int
	addedSizes     string // the bytes of each round's new messages
	raw            int64  // the mailbox's bytes
	dsyncWire      int64  // first sync over a pipe
	dsyncWireBack  int64
	dsyncPipe      time.Duration
	mailfsWire     int64 // first sync
	pair           *rbPair
	dsyncIdle      time.Duration // a sync with nothing to do
	mailfsIdle     time.Duration
}

// rbRounds is how many change sets each incremental measurement makes
// (the median is reported).
const rbRounds = 3

func rbMedian(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// incremental: a mailbox of n messages in sync on both sides; 100
// deliveries and 200 flag changes on A; one sync; rbRounds times. With
// realFirst the dsync pair gets in sync with a first sync over a pipe
// (measuring its bytes); without, it is primed with identical trees (a
// first dsync of 50k takes minutes and is not what is measured).
func (bn *rbBench) incremental(n int, seed uint64, realFirst bool) rbIncResult {
	t := bn.t
	msgs := rbCorpus(seed, 0, n)
	var rounds []rbChanges
	state := slices.Clone(msgs)
	for r := 0; r < rbRounds; r++ {
		rounds = append(rounds, rbMakeChanges(state, r, 100, 200))
	}
	res := rbIncResult{added: len(rounds[0].added), flagged: len(rounds[0].flagged), raw: rbRaw(msgs)}
	var sizes []string
	for _, ch := range rounds {
		sizes = append(sizes, rbHuman(rbRaw(ch.added)))
	}
	res.addedSizes = strings.Join(sizes, ", ")
	t.Logf("incremental corpus: %s; new messages per round: %s", rbStats(msgs), res.addedSizes)

	d := bn.newDsync()
	rbWriteMessages(t, d.a, msgs)
	if realFirst {
		d.chown()
		t.Logf("doveadm fetch (builds A's indexes), %d msgs: %v", n, d.index())
		res.dsyncPipe, res.dsyncWire, res.dsyncWireBack = d.syncToBPipe()
		t.Logf("doveadm sync over a pipe, first sync of %d: %v, %s to the server, %s back", n, res.dsyncPipe,
			rbHuman(res.dsyncWire), rbHuman(res.dsyncWireBack))
	} else {
		rbWriteMessages(t, d.b, msgs)
		uidlist := rbUidlist(msgs)
		for _, dir := range []string{d.a, d.b} {
			if err := os.WriteFile(filepath.Join(dir, "dovecot-uidlist"), uidlist, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		d.chown()
		t.Logf("doveadm sync priming %d identical messages: %v", n, d.syncToB())
	}
	if got, want := rbFlagCounts(t, d.b), rbFlagCounts(t, d.a); got != want {
		t.Fatalf("dsync before the changes: B has %s, A %s", got, want)
	}
	// A no-change sync first: both sides' indexes are current, as on
	// servers that have been syncing.
	res.dsyncIdle = d.syncToB()
	t.Logf("doveadm sync with no changes, %d msgs: %v", n, res.dsyncIdle)
	var dsyncTimes []time.Duration
	for r, ch := range rounds {
		ch.apply(t, d.a)
		d.chown()
		unix.Sync()
		dsyncTimes = append(dsyncTimes, d.syncToB())
		if got, want := rbFlagCounts(t, d.b), rbFlagCounts(t, d.a); got != want {
			t.Fatalf("dsync incremental: B has %s, A %s", got, want)
		}
		t.Logf("doveadm sync, incremental round %d in %d: %v", r+1, n, dsyncTimes[r])
	}
	res.dsync = rbMedian(dsyncTimes)

	md := filepath.Join(t.TempDir(), "vmail")
	rbWriteMessages(t, filepath.Join(md, rbMailbox), msgs)
	p := bn.startPair(md)
	res.pair = p
	unix.Sync()
	start := time.Now()
	p.pair()
	p.sync()
	res.first = time.Since(start)
	res.mailfsWire = p.bytesSent()
	t.Logf("mailfs first sync of %d: %v, %s sent for %s raw", n, res.first, rbHuman(res.mailfsWire), rbHuman(res.raw))
	rbSameListing(t, "mailfs first sync", rbListing(t, p.mbox(p.a), false), rbListing(t, p.mbox(p.b), false))

	var mailfsTimes []time.Duration
	for r, ch := range rounds {
		p.fwd.cut()
		start = time.Now()
		ch.apply(t, p.mbox(p.a))
		changes := time.Since(start)
		unix.Sync()
		start = time.Now()
		p.fwd.heal()
		p.sync()
		mailfsTimes = append(mailfsTimes, time.Since(start))
		t.Logf("mailfs incremental round %d in %d: %v (making the changes through A's mount took %v)", r+1, n,
			mailfsTimes[r], changes)
		rbSameListing(t, "mailfs incremental", rbListing(t, p.mbox(p.a), false), rbListing(t, p.mbox(p.b), false))
		rbSameBodies(t, p, ch.added)
	}
	dumpLogsAs(t, fmt.Sprintf("-%d", n), []*node{p.a, p.b})
	res.mailfs = rbMedian(mailfsTimes)
	start = time.Now()
	p.sync()
	res.mailfsIdle = time.Since(start)
	return res
}

// rbUidlist is a dovecot-uidlist giving msgs UIDs 1..n in one mailbox
// (the same GUID and UIDVALIDITY on both sides of a primed dsync pair).
func rbUidlist(msgs []rbMsg) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "3 V1700000000 N%d G%s\n", len(msgs)+1, "6d61696c66732d62656e63682d696e62")
	for i, m := range msgs {
		fmt.Fprintf(&b, "%d :%s\n", i+1, m.name())
	}
	return b.Bytes()
}

type rbLatency struct {
	rate, n, seen int
	p50, p90, p99 time.Duration
	max           time.Duration
	raw, wire     int64
}

// latency delivers rate messages a second into A for d and measures when
// each appears in B's mount.
func (bn *rbBench) latency(p *rbPair, rate int, d time.Duration) rbLatency {
	t := bn.t
	waitConnected(t, p.a.Name, p.a.Store, p.b.ID, p.b.Name, p.fwd.addr)
	n := rate * int(d/time.Second)
	msgs := rbCorpus(9, 2000000, n)
	res := rbLatency{rate: rate, n: n, raw: rbRaw(msgs)}

	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	for _, sub := range []string{"new", "cur"} {
		if _, err := unix.InotifyAddWatch(fd, filepath.Join(p.mbox(p.b), sub), unix.IN_MOVED_TO|unix.IN_CREATE); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	seen := map[string]time.Time{}
	stop := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		buf := make([]byte, 64<<10)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 50); err != nil && err != unix.EINTR {
				return
			}
			k, err := unix.Read(fd, buf)
			now := time.Now()
			if err != nil || k <= 0 {
				continue
			}
			for off := 0; off+unix.SizeofInotifyEvent <= k; {
				ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
				name := string(bytes.TrimRight(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+int(ev.Len)], "\x00"))
				base, _, _ := strings.Cut(name, ":")
				mu.Lock()
				if _, ok := seen[base]; !ok {
					seen[base] = now
				}
				mu.Unlock()
				off += unix.SizeofInotifyEvent + int(ev.Len)
			}
		}
	}()

	before := p.bytesSent()
	delivered := make([]time.Time, n)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	start := time.Now()
	interval := time.Second / time.Duration(rate)
	for i := range msgs {
		time.Sleep(time.Until(start.Add(time.Duration(i) * interval)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			at, err := rbDeliver(p.mbox(p.a), msgs[i])
			if err != nil {
				errs <- err
			}
			delivered[i] = at
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("delivering at %d/s: %v", rate, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		k := len(seen)
		mu.Unlock()
		if k >= n || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	close(stop)
	<-watched
	p.sync()
	res.wire = p.bytesSent() - before
	var lat []time.Duration
	mu.Lock()
	for i, m := range msgs {
		if at, ok := seen[m.base]; ok {
			lat = append(lat, at.Sub(delivered[i]))
		}
	}
	mu.Unlock()
	res.seen = len(lat)
	if res.seen < n {
		t.Errorf("latency: only %d of %d deliveries were seen on B within 30 s of the last", res.seen, n)
	}
	if len(lat) == 0 {
		t.Fatal("latency: nothing seen on B")
	}
	slices.Sort(lat)
	pct := func(q float64) time.Duration { return lat[int(math.Ceil(q*float64(len(lat))))-1] }
	res.p50, res.p90, res.p99, res.max = pct(0.50), pct(0.90), pct(0.99), lat[len(lat)-1]
	t.Logf("delivery-to-visible at %d/s: p50 %v p90 %v p99 %v max %v (%d of %d), %s sent for %s raw",
		rate, res.p50, pct(0.9), res.p99, lat[len(lat)-1], res.seen, n, rbHuman(res.wire), rbHuman(res.raw))
	rbSameListing(t, "mailfs after the latency run", rbListing(t, p.mbox(p.a), false), rbListing(t, p.mbox(p.b), false))
	return res
}
