package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"mailfs/index"
)

func runStatus(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("status [--store DIR] [--json] [--check [--max-lag DUR]] [PATTERN]",
		"Show this node's state and its peers' replication: per peer whether it is connected, what it lacks\n"+
			"of this node's journal (ops, bytes, and the age of the oldest op it has not acknowledged), the last\n"+
			"fast sync (every op acknowledged), the last full sync and its result, the last success, the last\n"+
			"failure with its error, and the peer's clock skew. Asks the running daemon through\n"+
			"STORE/mailfs.sock when mounted, else reads the store (then no peer is connected).\n\n"+
			"PATTERN lists the users it matches ('*' any characters, '?' one; a user is the directory that\n"+
			"holds a Maildir, e.g. example.com/alice) with their mailboxes, messages and, per peer, the ops of\n"+
			"theirs that peer still lacks.\n\n"+
			"--check is a monitoring probe (Nagios convention): it prints one line and exits 0 when every\n"+
			"paired peer is connected, none lacks an op older than --max-lag and no peer's clock is more than\n"+
			"1 minute off, else 2 (also when mailfs is not running or no peer is paired).",
		"mailfs status --check --max-lag 10m\n  mailfs status 'example.com/*'\n  mailfs status --json", stderr)
	store := fs.String("store", defaultStore(), "store directory")
	asJSON := fs.Bool("json", false, "print JSON (the fields of design §9 and more)")
	check := fs.Bool("check", false, "monitoring probe: one line, exit 0 healthy, 2 not")
	maxLag := fs.Duration("max-lag", 5*time.Minute, "with --check: the oldest unacknowledged op allowed")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 1 {
		return usageErr("one PATTERN at most (got %q)", fs.Args())
	}
	pattern := fs.Arg(0)
	if fs.Changed("max-lag") && !*check {
		return usageErr("--max-lag goes with --check")
	}
	if *check && (*asJSON || pattern != "") {
		return usageErr("--check prints one line: it takes neither --json nor a PATTERN")
	}
	if *maxLag <= 0 {
		return usageErr("--max-lag must be positive")
	}
	dir, err := filepath.Abs(*store)
	if err != nil {
		return err
	}
	paths := storePaths{Dir: dir}
	var rep statusReply
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if *check {
		err := controlCall(ctx, paths, controlRequest{Cmd: "status"},
			func(raw json.RawMessage) error { return json.Unmarshal(raw, &rep) })
		if errors.Is(err, errNotRunning) {
			fmt.Fprintf(stdout, "MAILFS CRITICAL - mailfs is not running for store %s\n", dir)
			return &exitError{code: exitCheckFailed, silent: true, err: errors.New("not running")}
		}
		if err != nil {
			fmt.Fprintf(stdout, "MAILFS CRITICAL - status: %v\n", err)
			return &exitError{code: exitCheckFailed, silent: true, err: err}
		}
		line, ok := checkLine(rep, *maxLag)
		fmt.Fprintln(stdout, line)
		if !ok {
			return &exitError{code: exitCheckFailed, silent: true, err: errors.New(line)}
		}
		return nil
	}
	err = queryStore(ctx, paths, stderr, controlRequest{Cmd: "status", Pattern: pattern},
		func(raw json.RawMessage) error { return json.Unmarshal(raw, &rep) },
		func(st *openedStore) error {
			var err error
			rep, err = buildStatus(st, pattern)
			return err
		})
	if err != nil {
		return err
	}
	if rep.Peers == nil {
		rep.Peers = []statusPeer{}
	}
	if *asJSON {
		_, err := stdout.Write(mustJSON(rep))
		return err
	}
	if pattern != "" {
		return printUsers(stdout, rep, pattern)
	}
	n := rep.Node
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	state := "not mounted"
	if n.Mounted {
		state = "mounted at " + n.Mountpoint
	}
	fmt.Fprintf(tw, "node\t%s\t%s\n", n.Name, n.ID)
	fmt.Fprintf(tw, "state\t%s\n", state)
	fmt.Fprintf(tw, "maildir\t%s\n", n.Maildir)
	fmt.Fprintf(tw, "listen\t%s\n", orDash(n.Listen))
	fmt.Fprintf(tw, "journal seq\t%d\n", n.JournalSeq)
	fmt.Fprintf(tw, "mailboxes\t%d\n", n.Mailboxes)
	fmt.Fprintf(tw, "messages\t%d\n", n.Messages)
	tw.Flush()
	fmt.Fprintln(stdout)
	if len(rep.Peers) == 0 {
		fmt.Fprintln(stdout, "peers: none paired")
		return nil
	}
	printPeers(stdout, rep.Peers)
	return nil
}

// printPeers prints the peers' table, then per peer what does not fit in
// it: its ID and address, the last error, the last full sync's result, the
// clock measurement and a running catch-up.
func printPeers(w io.Writer, ps []statusPeer) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tCONNECTED\tINBOUND\tACKED\tLAG OPS\tLAG BYTES\tLAG\tFAST SYNC\tFULL SYNC\tLAST SUCCESS\tLAST FAILURE\tCLOCK SKEW")
	for _, p := range ps {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", orDash(p.Name),
			yesNo(p.Connected), yesNo(p.Inbound), p.AckedSeq, p.LagOps, humanBytes(p.LagBytes), lagAge(p),
			ago(p.LastFastSync), fullSyncAge(p), ago(p.LastSuccess), ago(p.LastFailure), skewText(p.ClockSkewMs))
	}
	tw.Flush()
	for _, p := range ps {
		fmt.Fprintf(w, "\n%s  %s\n", orDash(p.Name), p.ID)
		line := func(label, format string, a ...any) {
			fmt.Fprintf(w, "  %-12s %s\n", label, fmt.Sprintf(format, a...))
		}
		line("address", "%s", orDash(p.Address))
		if p.LastError != "" {
			line("last error", "%s", p.LastError)
		}
		if p.LastFullSync != nil {
			line("full sync", "%s: %s", ago(p.LastFullSync), p.LastFullSyncResult)
		}
		if p.ClockSkewMs != nil {
			// Good to half the round trip, and to the millisecond the
			// peer's time is given in.
			line("clock", "%s (within %s, measured %s)", skewSentence(*p.ClockSkewMs),
				time.Duration((deref64(p.ClockSkewRTTMs)+1)/2+1)*time.Millisecond, ago(p.ClockSkewMeasured))
		}
		if c := p.CatchUp; c != nil {
			eta := "-"
			if c.ETASeconds > 0 {
				eta = (time.Duration(c.ETASeconds) * time.Second).String()
			}
			line("catching up", "%d of %d ops (%.0f%%), %s sent of %s, %.0f ops/s, ETA %s",
				c.DoneOps, c.TotalOps, 100*float64(c.DoneOps)/float64(max(c.TotalOps, 1)), humanBytes(c.SentBytes),
				humanBytes(c.TotalBytes), c.OpsPerSec, eta)
		}
	}
}

// fullSyncAge is the FULL SYNC column: the last full sync's age, marked
// when it failed.
func fullSyncAge(p statusPeer) string {
	if p.LastFullSync == nil {
		return "-"
	}
	if !p.LastFullSyncOK {
		return "failed " + ago(p.LastFullSync)
	}
	return ago(p.LastFullSync)
}

// skewText is the CLOCK SKEW column: the peer's clock minus this node's,
// signed ("+12ms", "-2m3s"), "-" when not measured.
func skewText(ms *int64) string {
	if ms == nil {
		return "-"
	}
	d := roundSkew(*ms)
	if d > 0 {
		return "+" + d.String()
	}
	return d.String()
}

// skewSentence says the skew in words.
func skewSentence(ms int64) string {
	d := roundSkew(ms)
	switch {
	case d > 0:
		return d.String() + " ahead of this node's"
	case d < 0:
		return (-d).String() + " behind this node's"
	}
	return "the same as this node's"
}

// roundSkew keeps milliseconds under 10 s and seconds above.
func roundSkew(ms int64) time.Duration {
	d := time.Duration(ms) * time.Millisecond
	if d.Abs() >= 10*time.Second {
		return d.Round(time.Second)
	}
	return d
}

func deref64(p *int64) int64 {
	if p == nil {
		return 0
	}
	return *p
}

// maxSkew is the clock skew past which status --check is CRITICAL: the HLC
// orders ops whatever the clocks say, but a node's clock that far off
// gives its messages and logs wrong times, and means NTP is broken.
const maxSkew = time.Minute

// exitCheckFailed is status --check's "not healthy": Nagios's CRITICAL.
const exitCheckFailed = 2

// checkLine judges rep for status --check: healthy when every paired peer
// is connected, none lacks an op older than maxLag, and no peer's clock is
// off by more than maxSkew.
func checkLine(rep statusReply, maxLag time.Duration) (string, bool) {
	if len(rep.Peers) == 0 {
		return "MAILFS CRITICAL - no peer is paired: nothing is replicated", false
	}
	var bad []string
	var worst, worstSkew time.Duration
	skewKnown := false
	for _, p := range rep.Peers {
		lag := time.Duration(p.LagSeconds * float64(time.Second)).Round(time.Second)
		worst = max(worst, lag)
		switch {
		case !p.Connected:
			msg := fmt.Sprintf("peer %s disconnected (%d ops unacknowledged, oldest %s)", orDash(p.Name), p.LagOps, lag)
			if p.LastError != "" {
				msg += ": " + p.LastError
			}
			bad = append(bad, msg)
		case p.LagOps > 0 && lag > maxLag:
			bad = append(bad, fmt.Sprintf("peer %s lacks %d ops, the oldest %s old (max %s)", orDash(p.Name), p.LagOps, lag, maxLag))
		}
		if p.ClockSkewMs != nil {
			skew := time.Duration(*p.ClockSkewMs) * time.Millisecond
			worstSkew, skewKnown = max(worstSkew, skew.Abs()), true
			if skew.Abs() > maxSkew {
				bad = append(bad, fmt.Sprintf("peer %s's clock is %s (max %s): fix NTP", orDash(p.Name),
					skewSentence(*p.ClockSkewMs), maxSkew))
			}
		}
	}
	if len(bad) > 0 {
		return "MAILFS CRITICAL - " + strings.Join(bad, "; "), false
	}
	line := fmt.Sprintf("MAILFS OK - %d of %d peers connected, oldest unacknowledged op %s (max %s)",
		len(rep.Peers), len(rep.Peers), worst, maxLag)
	if skewKnown {
		line += fmt.Sprintf(", clock skew %s (max %s)", roundSkew(worstSkew.Milliseconds()), maxSkew)
	}
	return line, true
}

// printUsers prints status PATTERN's table: one row per user, with the ops
// of theirs each peer still lacks.
func printUsers(w io.Writer, rep statusReply, pattern string) error {
	if len(rep.Users) == 0 {
		fmt.Fprintf(w, "no user matches %q\n", pattern)
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	head := "USER\tMAILBOXES\tMESSAGES"
	for _, p := range rep.Peers {
		head += "\tPENDING " + orDash(p.Name)
	}
	fmt.Fprintln(tw, head)
	for _, u := range rep.Users {
		row := fmt.Sprintf("%s\t%d\t%d", u.User, u.Mailboxes, u.Messages)
		for _, p := range rep.Peers {
			row += fmt.Sprintf("\t%d", u.Pending[p.ID])
		}
		fmt.Fprintln(tw, row)
	}
	return tw.Flush()
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// lagAge is the age of the oldest op the peer lacks, "-" when none.
func lagAge(p statusPeer) string {
	if p.LagOps == 0 {
		return "-"
	}
	return time.Duration(p.LagSeconds * float64(time.Second)).Round(time.Second).String()
}

// ago renders an RFC 3339 time as its age ("3m12s ago"), "-" for never.
func ago(ts *string) string {
	if ts == nil {
		return "-"
	}
	t, err := time.Parse(time.RFC3339Nano, *ts)
	if err != nil {
		return *ts
	}
	return time.Since(t).Round(time.Second).String() + " ago"
}

func humanBytes(n int64) string {
	switch {
	case n < 1<<10:
		return fmt.Sprintf("%d B", n)
	case n < 1<<20:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	case n < 1<<30:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func runJournal(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("journal [--store DIR] [--since SEQ] [--json]",
		"Print the journaled ops from SEQ on, one per line: what mailfs will replicate.\n"+
			"Asks the running daemon when mounted, else reads the store.",
		"mailfs journal --since 100 --json", stderr)
	store := fs.String("store", defaultStore(), "store directory")
	since := fs.Uint64("since", 1, "first journal seq to print")
	asJSON := fs.Bool("json", false, "one JSON object per line")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageErr("unexpected argument %q", fs.Arg(0))
	}
	dir, err := filepath.Abs(*store)
	if err != nil {
		return err
	}
	paths := storePaths{Dir: dir}
	print := func(l journalLine) error {
		if *asJSON {
			b, _ := json.Marshal(l)
			_, err := fmt.Fprintf(stdout, "%s\n", b)
			return err
		}
		_, err := fmt.Fprintf(stdout, "%d\t%s\t%s\t%s\t%s\t%v\n", l.Seq, l.Kind, l.Path+l.NewPath, l.Key, l.Name, l.Flags)
		return err
	}
	return queryStore(context.Background(), paths, stderr, controlRequest{Cmd: "journal", Since: *since},
		func(raw json.RawMessage) error {
			var l journalLine
			if err := json.Unmarshal(raw, &l); err != nil {
				return err
			}
			return print(l)
		},
		func(st *openedStore) error {
			return st.index.Ops(*since, func(op *journalOp) error { return print(opLine(op)) })
		})
}

// queryStore asks the daemon running for the store (each reply line goes
// to fromDaemon) or, when none runs, opens the store read-only for offline.
func queryStore(ctx context.Context, paths storePaths, stderr io.Writer, req controlRequest,
	fromDaemon func(json.RawMessage) error, offline func(*openedStore) error) error {
	err := controlCall(ctx, paths, req, fromDaemon)
	if !errors.Is(err, errNotRunning) {
		return err
	}
	st, err := openForQuery(paths, newLogger(stderr))
	if err != nil {
		return err
	}
	defer st.Close()
	return offline(st)
}

func runMailboxes(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("mailboxes [--store DIR] [--json]",
		"List the mailboxes this node knows: GUID (the same on every node of a replicated pair), path under\n"+
			"the Maildir tree, and message count. Asks the running daemon when mounted, else reads the store.",
		"mailfs mailboxes --json", stderr)
	store := fs.String("store", defaultStore(), "store directory")
	asJSON := fs.Bool("json", false, "one JSON object per line")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageErr("unexpected argument %q", fs.Arg(0))
	}
	dir, err := filepath.Abs(*store)
	if err != nil {
		return err
	}
	paths := storePaths{Dir: dir}
	var lines []mailboxLine
	err = queryStore(context.Background(), paths, stderr, controlRequest{Cmd: "mailboxes"},
		func(raw json.RawMessage) error {
			var l mailboxLine
			if err := json.Unmarshal(raw, &l); err != nil {
				return err
			}
			lines = append(lines, l)
			return nil
		},
		func(st *openedStore) error {
			return st.index.Mailboxes(func(mb index.Mailbox) error {
				lines = append(lines, mailboxLineOf(mb))
				return nil
			})
		})
	if err != nil {
		return err
	}
	sort.Slice(lines, func(i, j int) bool { return lines[i].Path < lines[j].Path })
	if *asJSON {
		for _, l := range lines {
			b, _ := json.Marshal(l)
			fmt.Fprintf(stdout, "%s\n", b)
		}
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "GUID\tMESSAGES\tPATH")
	for _, l := range lines {
		fmt.Fprintf(tw, "%s\t%d\t%s\n", l.GUID, l.Messages, orDash(l.Path))
	}
	return tw.Flush()
}
