package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"time"
)

func runSync(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("sync [--store DIR] [--full] [--mailbox PATH] [--timeout DUR]",
		"Wait until every paired peer has acknowledged every op journaled before the call, then exit 0.\n"+
			"Replication runs all the time while mounted; this only waits for it, so scripts can be sure a\n"+
			"change has reached the other servers (e.g. before moving users). Exit codes: 0 every peer has it;\n"+
			"75 a peer did not acknowledge within --timeout (unreachable or slow: run again later);\n"+
			"1 mailfs is not running for this store, or another failure.\n\n"+
			"With --full, run the anti-entropy full sync instead: compare every mailbox's digest with each\n"+
			"peer's, walk the messages of those that differ, and repair this node from the peer: message files\n"+
			"deleted behind mailfs's back come back (same name, flags and mtime), messages whose op never\n"+
			"arrived are placed, newer flag changes are taken; expunged mail never comes back. It prints what it\n"+
			"compared and repaired. Exit codes: 0 done; 75 a peer was unreachable or --timeout passed (named);\n"+
			"2 local changes raced some repairs (run it again); 1 another failure. The mount also runs it after\n"+
			"an unclean stop and every --full-sync-interval.",
		"mailfs sync --timeout 2m\n  mailfs sync --full --mailbox example.com/alice/Maildir/.Sent --timeout 10m", stderr)
	store := fs.String("store", defaultStore(), "store directory")
	timeout := fs.Duration("timeout", 5*time.Minute, "give up (exit 75) after DUR")
	full := fs.Bool("full", false, "run the anti-entropy full sync (compare with every peer, repair this node) instead of waiting")
	mailbox := fs.String("mailbox", "", "restrict --full to the mailbox at PATH (relative to the Maildir tree, as 'mailfs mailboxes' lists it)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageErr("unexpected argument %q", fs.Arg(0))
	}
	if *mailbox != "" && !*full {
		return usageErr("--mailbox restricts --full: give --full too")
	}
	if *timeout <= 0 {
		return usageErr("--timeout must be positive")
	}
	dir, err := filepath.Abs(*store)
	if err != nil {
		return err
	}
	if *full {
		return runFullSync(dir, *mailbox, *timeout, stdout)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout+10*time.Second)
	defer cancel()
	var rep struct {
		SyncedSeq uint64 `json:"synced_seq"`
	}
	err = controlCall(ctx, storePaths{Dir: dir}, controlRequest{Cmd: "sync", TimeoutMs: timeout.Milliseconds()},
		func(raw json.RawMessage) error { return json.Unmarshal(raw, &rep) })
	if errors.Is(err, errNotRunning) {
		return fmt.Errorf("mailfs is not running for store %s: replication runs inside 'mailfs mount' (start it first)", dir)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return &exitError{code: exitTemporary, err: fmt.Errorf("the daemon did not answer within %s", *timeout)}
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "every peer has journal seq %d\n", rep.SyncedSeq)
	return nil
}
