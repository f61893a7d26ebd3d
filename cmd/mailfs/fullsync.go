package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"mailfs/peers"
	"mailfs/syncer"
)

// fullSyncPeer is one peer's part of a full-sync reply.
type fullSyncPeer struct {
	ID           string `json:"id"`
	Name         string `json:"name"`
	Address      string `json:"address"`
	Compared     int    `json:"compared"`
	Differing    int    `json:"differing"`
	Restored     int    `json:"restored"`
	Added        int    `json:"added"`
	Flagged      int    `json:"flagged"`
	Files        int    `json:"files"`
	Unrepaired   int    `json:"unrepaired"`
	Raced        int    `json:"raced"`
	BytesFetched int64  `json:"bytes_fetched"`
	Err          string `json:"err,omitempty"`
	Unreachable  bool   `json:"unreachable,omitempty"`
}

type fullSyncReply struct {
	FullSync []fullSyncPeer `json:"full_sync"`
}

// fullSync runs the daemon's full sync with every peer and answers its
// report.
func (cs *controlServer) fullSync(enc *json.Encoder, req controlRequest) {
	if cs.st.sync == nil {
		enc.Encode(controlError{Error: "replication is not running"})
		return
	}
	ctx, cancel := context.WithTimeout(cs.ctx, time.Duration(req.TimeoutMs)*time.Millisecond)
	defer cancel()
	rep, err := cs.st.sync.FullSync(ctx, syncer.FullSyncOptions{Mailbox: req.Mailbox, Reason: "command"})
	if err != nil {
		code := exitFailure
		if errors.Is(err, context.DeadlineExceeded) {
			code = exitTemporary // still waiting for a full sync already running
		}
		enc.Encode(controlError{Error: err.Error(), Exit: code})
		return
	}
	out := fullSyncReply{FullSync: []fullSyncPeer{}}
	for _, p := range rep.Peers {
		fp := fullSyncPeer{ID: peers.FormatID(p.ID), Name: p.Name, Address: p.Address, Compared: p.Compared,
			Differing: p.Differing, Restored: p.Restored, Added: p.Added, Flagged: p.Flagged, Unrepaired: p.Unrepaired,
			Files: p.Files, Raced: p.Raced, BytesFetched: p.BytesFetched, Unreachable: p.Unreachable}
		if p.Err != nil {
			fp.Err = p.Err.Error()
		}
		out.FullSync = append(out.FullSync, fp)
	}
	enc.Encode(out)
}

func runFullSync(dir, mailbox string, timeout time.Duration, stdout io.Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout+10*time.Second)
	defer cancel()
	var rep fullSyncReply
	err := controlCall(ctx, storePaths{Dir: dir}, controlRequest{Cmd: "full-sync", TimeoutMs: timeout.Milliseconds(), Mailbox: mailbox},
		func(raw json.RawMessage) error { return json.Unmarshal(raw, &rep) })
	if errors.Is(err, errNotRunning) {
		return fmt.Errorf("mailfs is not running for store %s: the full sync runs inside 'mailfs mount' (start it first)", dir)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return &exitError{code: exitTemporary, err: fmt.Errorf("the daemon did not answer within %s", timeout)}
	}
	if err != nil {
		return err
	}
	var unreachable, failed []string
	var t fullSyncPeer
	for _, p := range rep.FullSync {
		who := fmt.Sprintf("%s (%s) at %s", orDash(p.Name), p.ID, orDash(p.Address))
		state := "ok"
		switch {
		case p.Unreachable:
			state = "unreachable: " + p.Err
			unreachable = append(unreachable, who+": "+p.Err)
		case p.Err != "":
			state = "failed: " + p.Err
			failed = append(failed, who+": "+p.Err)
		}
		fmt.Fprintf(stdout, "peer %s: %s\n", who, state)
		fmt.Fprintf(stdout, "  mailboxes compared %d, differing %d; messages restored %d, added %d, flags taken %d; "+
			"files restored %d; not repairable %d, raced %d; bytes fetched %d\n", p.Compared, p.Differing, p.Restored,
			p.Added, p.Flagged, p.Files, p.Unrepaired, p.Raced, p.BytesFetched)
		t.Compared += p.Compared
		t.Differing += p.Differing
		t.Restored += p.Restored + p.Added
		t.Files += p.Files
		t.Raced += p.Raced
		t.BytesFetched += p.BytesFetched
	}
	fmt.Fprintf(stdout, "full sync: %d peers, mailboxes compared %d, differing %d, messages repaired %d, files restored %d, "+
		"bytes fetched %d\n", len(rep.FullSync), t.Compared, t.Differing, t.Restored, t.Files, t.BytesFetched)
	switch {
	case len(unreachable) > 0:
		return &exitError{code: exitTemporary, err: fmt.Errorf("full sync: peer unreachable (run again later): %s",
			strings.Join(unreachable, "; "))}
	case len(failed) > 0:
		return fmt.Errorf("full sync failed: %s", strings.Join(failed, "; "))
	case t.Raced > 0:
		return &exitError{code: exitRaced, err: fmt.Errorf("full sync: %d repairs raced local changes; run it again", t.Raced)}
	}
	return nil
}
