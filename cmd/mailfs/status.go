package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"text/tabwriter"
	"time"

	"mailfs/index"
)

func runStatus(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("status [--store DIR] [--json]",
		"Show this node's state: node ID and name, journal seq, mailboxes and messages, and its peers.\n"+
			"Asks the running daemon through STORE/mailfs.sock when mounted, else reads the store.",
		"mailfs status --json", stderr)
	store := fs.String("store", defaultStore(), "store directory")
	asJSON := fs.Bool("json", false, "print JSON (fields of design §9)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageErr("PATTERN filtering is not supported yet (got %q)", fs.Arg(0))
	}
	dir, err := filepath.Abs(*store)
	if err != nil {
		return err
	}
	paths := storePaths{Dir: dir}
	var rep statusReply
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = queryStore(ctx, paths, stderr, controlRequest{Cmd: "status"},
		func(raw json.RawMessage) error { return json.Unmarshal(raw, &rep) },
		func(st *openedStore) error {
			ps, err := peerStatus(st)
			rep = statusReply{Node: nodeStatus(st), Peers: ps}
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
	tw = tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tID\tADDRESS\tCONNECTED\tACKED\tLAG OPS\tLAST SUCCESS\tLAST ERROR")
	for _, p := range rep.Peers {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%d\t%d\t%s\t%s\n", orDash(p.Name), p.ID, orDash(p.Address), p.Connected,
			p.AckedSeq, p.LagOps, orDash(deref(p.LastSuccess)), orDash(p.LastError))
	}
	return tw.Flush()
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
