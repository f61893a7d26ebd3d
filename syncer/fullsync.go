package syncer

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"mailfs/index"
	"mailfs/journal"
	"mailfs/peers"
)

// The anti-entropy full sync (design §8): this node asks each peer for the
// digests of its mailboxes, compares them with its own, walks the key
// lists of the mailboxes that differ, and repairs itself from the peer:
//   - a message whose file vanished behind mailfs's back (marked missing
//     at reconcile) is fetched and put back under its recorded name, sub
//     and mtime, as the op that added it, so nothing new is journaled;
//   - a message the peer has and this node has neither a record nor a
//     tombstone of (an op that never arrived) is placed as that add op
//     would have placed it (same stamp), so expunges still win and a later
//     arrival of the op changes nothing;
//   - a flag whose change on the peer is newer than this node's is taken
//     (rule 6).
// Each node repairs only itself; the peer repairs itself when it runs its
// own full sync. What the peer says is checked before anything is done with
// it; a bad answer ends the exchange with that peer, logged.

// FullSyncOptions say what a full sync covers.
type FullSyncOptions struct {
	// Mailbox restricts it to the mailbox at this path ("" : every one).
	Mailbox string
	// Reason is logged: "command", "unclean stop", "periodic".
	Reason string
}

// FullSyncPeerReport is what a full sync did with one peer.
type FullSyncPeerReport struct {
	ID      journal.NodeID
	Name    string
	Address string
	// Compared mailboxes the peer listed; Differing those whose digest
	// was not this node's.
	Compared, Differing int
	// Restored missing message files, Added messages that never arrived,
	// Flagged messages whose flags were taken from the peer, Files missing
	// plain files restored.
	Restored, Added, Flagged, Files int
	// Unrepaired differences this node cannot repair from the peer (the
	// same key with other content, a mailbox not here, a body the peer no
	// longer had); Raced repairs a local change overtook.
	Unrepaired, Raced int
	BytesFetched      int64
	// Err is why the exchange failed; Unreachable says it was the network
	// (dial, handshake, timeout), not the peer's answer.
	Err         error
	Unreachable bool
	// clock is the peer's clock measured at the hello (unknown when the
	// exchange failed before, or the peer sends no time).
	clock clockSample
}

// FullSyncReport is a full sync with every paired peer.
type FullSyncReport struct {
	Peers []FullSyncPeerReport
}

// errFullUnreachable marks a peer the full sync could not talk to.
var errFullUnreachable = errors.New("peer unreachable")

// errNoMailbox is a --mailbox that names no mailbox here.
var errNoMailbox = errors.New("no such mailbox")

func (s *Syncer) fullLog() *slog.Logger { return s.cfg.Logger.With("component", "fullsync") }

// FullSync runs the full sync with every paired peer, one after the other.
func (s *Syncer) FullSync(ctx context.Context, opts FullSyncOptions) (FullSyncReport, error) {
	select {
	case s.fullRun <- struct{}{}:
	case <-ctx.Done():
		return FullSyncReport{}, fmt.Errorf("%w: another full sync is still running: %w", errFullUnreachable, ctx.Err())
	}
	defer func() { <-s.fullRun }()
	log := s.fullLog()
	var only journal.GUID
	if opts.Mailbox != "" {
		var ok bool
		err := s.cfg.Store.View(func(v index.PeerView) error {
			mb, have, err := v.MailboxAt(opts.Mailbox)
			only, ok = mb.GUID, have
			return err
		})
		if err != nil {
			return FullSyncReport{}, err
		}
		if !ok {
			return FullSyncReport{}, fmt.Errorf("%w at %q", errNoMailbox, opts.Mailbox)
		}
	}
	list, err := s.cfg.Store.ListPeers()
	if err != nil {
		return FullSyncReport{}, fmt.Errorf("full sync: list peers: %w", err)
	}
	log.Info("full sync started", "reason", opts.Reason, "peers", len(list), "mailbox", opts.Mailbox)
	var rep FullSyncReport
	for _, p := range list {
		pr := FullSyncPeerReport{ID: p.ID, Name: p.Name, Address: p.Address}
		plog := log.With("peer", peers.FormatID(p.ID), "peer_name", p.Name, "address", p.Address)
		if p.Address == "" {
			pr.Err, pr.Unreachable = fmt.Errorf("%w: no address to dial", errFullUnreachable), true
		} else {
			pr.Err = s.fullSyncPeer(ctx, p, only, &pr, plog)
			pr.Unreachable = errors.Is(pr.Err, errFullUnreachable)
		}
		switch {
		case pr.Err == nil:
		case pr.Unreachable:
			plog.Warn("full sync with peer failed: unreachable", "err", pr.Err)
		default:
			plog.Warn("full sync with peer stopped", "err", pr.Err)
		}
		plog.Info("full sync with peer done", "compared", pr.Compared, "differing", pr.Differing, "restored", pr.Restored,
			"added", pr.Added, "flagged", pr.Flagged, "files", pr.Files, "unrepaired", pr.Unrepaired, "raced", pr.Raced,
			"bytes_fetched", pr.BytesFetched, "ok", pr.Err == nil)
		if pr.clock.known() {
			s.noteClock(p.ID, pr.clock)
		}
		if opts.Mailbox == "" && s.ctx.Err() == nil {
			// Only a pass over every mailbox counts as the peer's last
			// full sync; one --mailbox says nothing of the others. One cut
			// short by this node's own shutdown says nothing of the peer.
			rec := index.PeerSync{LastFullSync: time.Now(), FullSyncOK: pr.Err == nil, FullSyncResult: pr.Summary()}
			if err := s.cfg.Store.PutPeerSync(p.ID, rec); err != nil {
				plog.Warn("recording the full sync's result failed", "err", err)
			}
		}
		rep.Peers = append(rep.Peers, pr)
	}
	t := rep.Total()
	log.Info("full sync finished", "reason", opts.Reason, "peers", len(rep.Peers), "failed", t.failed,
		"compared", t.Compared, "differing", t.Differing, "restored", t.Restored, "added", t.Added, "flagged", t.Flagged,
		"files", t.Files, "unrepaired", t.Unrepaired, "raced", t.Raced, "bytes_fetched", t.BytesFetched)
	return rep, nil
}

// Summary is the report in a few words, for status: "ok, 12 mailboxes
// compared, nothing to repair", or what was repaired, or why it failed.
func (r FullSyncPeerReport) Summary() string {
	var parts []string
	add := func(n int, what string) {
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, what))
		}
	}
	add(r.Differing, "differing")
	add(r.Restored, "restored")
	add(r.Added, "added")
	add(r.Flagged, "flags taken")
	add(r.Files, "files restored")
	add(r.Unrepaired, "unrepaired")
	add(r.Raced, "raced")
	if r.Err != nil {
		what := "failed"
		if r.Unreachable {
			what = "failed (unreachable)"
		}
		if r.Compared > 0 {
			parts = append([]string{mailboxesCompared(r.Compared)}, parts...)
		}
		if len(parts) > 0 {
			what += " after " + strings.Join(parts, ", ")
		}
		return clipReason(what + ": " + r.Err.Error())
	}
	if len(parts) == 0 {
		parts = []string{"nothing to repair"}
	}
	return fmt.Sprintf("ok, %s, %s", mailboxesCompared(r.Compared), strings.Join(parts, ", "))
}

func mailboxesCompared(n int) string {
	if n == 1 {
		return "1 mailbox compared"
	}
	return fmt.Sprintf("%d mailboxes compared", n)
}

// clipReason bounds a result kept in the index and shown by status.
func clipReason(s string) string {
	if len(s) > maxReason {
		return strings.ToValidUTF8(s[:maxReason], "")
	}
	return s
}

type fullTotals struct {
	FullSyncPeerReport
	failed int
}

// Total sums the per-peer counts.
func (r FullSyncReport) Total() fullTotals {
	var t fullTotals
	for _, p := range r.Peers {
		t.Compared += p.Compared
		t.Differing += p.Differing
		t.Restored += p.Restored
		t.Added += p.Added
		t.Flagged += p.Flagged
		t.Files += p.Files
		t.Unrepaired += p.Unrepaired
		t.Raced += p.Raced
		t.BytesFetched += p.BytesFetched
		if p.Err != nil {
			t.failed++
		}
	}
	return t
}

// fullConn is the asking side of one full sync connection.
type fullConn struct {
	conn net.Conn
	br   *bufio.Reader
	// timeout bounds each request and its answer.
	timeout time.Duration
}

func (fc *fullConn) call(req fsRequest, want byte, max int, v any) error {
	fc.conn.SetDeadline(time.Now().Add(fc.timeout))
	if err := writeFrame(fc.conn, frameRequest, req); err != nil {
		return fmt.Errorf("%w: %s request: %w", errFullUnreachable, req.Op, err)
	}
	err := readFrame(fc.br, want, max, v)
	if err != nil && !errors.Is(err, ErrProtocol) {
		return fmt.Errorf("%w: %s answer: %w", errFullUnreachable, req.Op, err)
	}
	if err != nil {
		return fmt.Errorf("%s answer: %w", req.Op, err)
	}
	return nil
}

func (s *Syncer) dialFull(ctx context.Context, p peers.Peer) (*tls.Conn, error) {
	raw, err := peers.LinkDialer(10*time.Second).DialContext(ctx, "tcp", p.Address)
	if err != nil {
		return nil, fmt.Errorf("%w: dial %s: %w", errFullUnreachable, p.Address, err)
	}
	conn := tls.Client(raw, peers.FullSyncClientConfig(s.cfg.Identity, p.ID))
	hctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	err = conn.HandshakeContext(hctx)
	cancel()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("%w: TLS handshake with %s: %w", errFullUnreachable, p.Address, err)
	}
	return conn, nil
}

func (s *Syncer) fullSyncPeer(ctx context.Context, p peers.Peer, only journal.GUID, rep *FullSyncPeerReport, log *slog.Logger) error {
	conn, err := s.dialFull(ctx, p)
	if err != nil {
		return err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	fc := &fullConn{conn: conn, br: bufio.NewReaderSize(conn, 64<<10), timeout: 2 * time.Minute}
	err = s.fullExchange(ctx, fc, only, rep, log)
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("%w: %w", errFullUnreachable, ctx.Err())
	}
	if err != nil && !errors.Is(err, errFullUnreachable) {
		log.Warn("refused a peer's full sync answer; exchange ended, nothing more repaired from it", "err", err)
	}
	return err
}

func (s *Syncer) fullExchange(ctx context.Context, fc *fullConn, only journal.GUID, rep *FullSyncPeerReport, log *slog.Logger) error {
	clock, err := fc.hello()
	if err != nil {
		return err
	}
	rep.clock = clock
	var after journal.GUID
	total := 0
	for {
		req := fsRequest{Op: "digests", Limit: fullPage}
		if !after.IsZero() {
			req.After = after.String()
		}
		if !only.IsZero() {
			req.Only = only.String()
		}
		var page fsDigests
		if err := fc.call(req, frameAnswer, maxFullFrame, &page); err != nil {
			return err
		}
		ds, err := checkDigests(&page, after, fullPage, only)
		if err != nil {
			return err
		}
		total += len(ds)
		if total > maxFullMailboxes {
			return fmt.Errorf("%w: more than %d mailboxes listed", ErrProtocol, maxFullMailboxes)
		}
		for _, d := range ds {
			if err := ctx.Err(); err != nil {
				return err
			}
			rep.Compared++
			if err := s.compareMailbox(ctx, fc, d, rep, log); err != nil {
				return err
			}
		}
		if !page.More || !only.IsZero() {
			break
		}
		after = ds[len(ds)-1].GUID
	}
	if !only.IsZero() {
		return nil
	}
	return s.restoreFiles(ctx, fc, rep, log)
}

// restoreFiles fetches the plain files marked missing here from the peer,
// where it has the same version (content ID), and puts them back as the op
// that wrote them.
func (s *Syncer) restoreFiles(ctx context.Context, fc *fullConn, rep *FullSyncPeerReport, log *slog.Logger) error {
	after := ""
	for {
		files, more, err := s.cfg.Store.MissingFiles(after, fullPage)
		if err != nil {
			return err
		}
		for _, f := range files {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := s.restoreFile(ctx, fc, f, rep, log); err != nil {
				return err
			}
		}
		if !more {
			return nil
		}
		after = files[len(files)-1].Path
	}
}

func (s *Syncer) restoreFile(ctx context.Context, fc *fullConn, f index.MissingFile, rep *FullSyncPeerReport, log *slog.Logger) error {
	body := ""
	if f.LinkTarget == "" {
		var err error
		body, err = s.fetch(fc, fsRequest{Op: "file", Key: f.Path, Content: f.Content.String(), Chunked: true}, f.Path, f.Size, f.Content, rep)
		if errors.Is(err, errBodyGone) {
			log.Info("the peer has no copy of a missing file in this version; not repaired", "path", f.Path)
			rep.Unrepaired++
			return nil
		}
		if err != nil {
			return err
		}
		defer os.Remove(body)
	}
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	now, still, err := s.cfg.Store.MissingFileAt(f.Path)
	if err != nil {
		return err
	}
	if !still || now != f.File {
		rep.Raced++
		return nil
	}
	op := &journal.Op{Kind: journal.FileWrite, Origin: f.Stamp.Origin, Time: f.Stamp.Time, Path: f.Path, Mode: f.Mode,
		Mtime: f.Mtime, Size: f.Size, Content: f.Content, LinkTarget: f.LinkTarget}
	bodies := staged{}
	if body != "" {
		bodies[f.Content] = body
	}
	err = s.applier.apply(ctx, op, bodies)
	s.applier.unlockAll()
	if err != nil {
		return fmt.Errorf("restore file %s: %w", f.Path, err)
	}
	rep.Files++
	log.Info("restored a file that vanished behind mailfs's back", "path", f.Path, "size", f.Size)
	return nil
}

// compareMailbox compares one mailbox the peer listed with this node's and
// repairs what differs.
func (s *Syncer) compareMailbox(ctx context.Context, fc *fullConn, d peerDigest, rep *FullSyncPeerReport, log *slog.Logger) error {
	local, ok, err := s.cfg.Store.MailboxDigestOf(d.GUID)
	if err != nil {
		return err
	}
	if ok && local.Digest == d.Digest && local.Count == d.Count {
		return nil
	}
	rep.Differing++
	if !ok {
		// Deleted here, or created on the peer by an op still on its way:
		// mailboxes come and go by the journal's ops, not by this repair.
		log.Info("mailbox of the peer not here; left to the journal", "mailbox", d.GUID.String(), "path", d.Path)
		rep.Unrepaired++
		return nil
	}
	log.Info("mailbox differs from the peer's; comparing its messages", "mailbox", d.GUID.String(), "path", local.Path,
		"messages", local.Count, "peer_messages", d.Count)
	after := ""
	var seen int64
	lim := s.limits()
	for {
		var page fsMessages
		req := fsRequest{Op: "messages", Mailbox: d.GUID.String(), After: after, Limit: fullPage}
		if err := fc.call(req, frameAnswer, maxFullFrame, &page); err != nil {
			return err
		}
		ms, err := checkMessages(&page, after, fullPage, seen, d.Count, lim.MaxBodySize)
		if err != nil {
			return fmt.Errorf("mailbox %s: %w", d.GUID, err)
		}
		seen += int64(len(ms))
		for i := range ms {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := s.repairMessage(ctx, fc, d.GUID, &ms[i], rep, log); err != nil {
				return err
			}
		}
		if !page.More {
			return nil
		}
		after = ms[len(ms)-1].Key
	}
}

func (s *Syncer) limits() journal.Limits {
	lim := s.cfg.Limits
	if lim.MaxBodySize <= 0 {
		lim = journal.DefaultLimits()
	}
	return lim
}

type repairKind int

const (
	repairNone     repairKind = iota
	repairRestore             // the local record's file is missing
	repairAdd                 // no record, no tombstone: the add never arrived
	repairFlags               // present with the same content: compare flags
	repairConflict            // the same key with other content
)

// localState is what a repair decision was made on.
type localState struct {
	kind repairKind
	mb   index.Mailbox
	msg  index.Message
}

func (s *Syncer) decide(g journal.GUID, e *peerMessage) (localState, error) {
	var st localState
	err := s.cfg.Store.View(func(v index.PeerView) error {
		mb, ok, err := v.Mailbox(g)
		if err != nil || !ok {
			return err
		}
		st.mb = mb
		m, have, err := v.Message(mb.GUID, e.Key)
		if err != nil {
			return err
		}
		if have {
			st.msg = m
			switch {
			case m.Content != e.Content:
				st.kind = repairConflict
			case m.Missing || mb.Missing:
				st.kind = repairRestore
			default:
				st.kind = repairFlags
			}
			return nil
		}
		dead, err := v.MessageExpunged(mb.GUID, e.Key)
		if err != nil || dead {
			return err // expunged or moved away here: that wins (rule 5)
		}
		st.kind = repairAdd
		return nil
	})
	return st, err
}

func sameState(a, b localState) bool {
	return a.kind == b.kind && a.mb.GUID == b.mb.GUID && a.mb.Path == b.mb.Path && a.mb.Missing == b.mb.Missing &&
		a.msg.Name == b.msg.Name && a.msg.Sub == b.msg.Sub && a.msg.Content == b.msg.Content && a.msg.Missing == b.msg.Missing
}

// repairMessage repairs this node's copy of one message of the peer's key
// list. A body is fetched before the applier is taken (the network must
// not hold up segments); the decision is made again under it, and a local
// change made meanwhile counts as raced and is left alone.
func (s *Syncer) repairMessage(ctx context.Context, fc *fullConn, g journal.GUID, e *peerMessage, rep *FullSyncPeerReport, log *slog.Logger) error {
	st, err := s.decide(g, e)
	if err != nil {
		return err
	}
	switch st.kind {
	case repairNone:
		return nil
	case repairConflict:
		log.Info("message with the same key and other content on the peer; left to the journal (rule 9)",
			"mailbox", st.mb.Path, "key", e.Key)
		rep.Unrepaired++
		return nil
	case repairFlags:
		return s.takeFlags(ctx, st, e, rep, log)
	}
	body, err := s.fetchBody(fc, g, e, rep)
	if errors.Is(err, errBodyGone) {
		log.Info("the peer no longer has the message's body; not repaired", "mailbox", st.mb.Path, "key", e.Key)
		rep.Unrepaired++
		return nil
	}
	if err != nil {
		return err
	}
	defer os.Remove(body)
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	now, err := s.decide(g, e)
	if err != nil {
		return err
	}
	if !sameState(st, now) {
		rep.Raced++
		return nil
	}
	a := s.applier
	defer a.unlockAll()
	switch st.kind {
	case repairRestore:
		if st.mb.Missing {
			if err := s.restoreMailboxDirs(ctx, st.mb); err != nil {
				return err
			}
		}
		m := st.msg
		// The op that added the message, carried out again: the index
		// records the file as that op's (its stamps, nothing journaled),
		// which clears the missing mark and leaves the record as it was.
		op := &journal.Op{Kind: journal.MessageAdd, Origin: m.Added.Origin, Seq: m.AddedSeq, Time: m.Added.Time,
			Mailbox: st.mb.GUID, Path: st.mb.Path, Key: m.Key, Sub: m.Sub, Flags: m.Flags, Mtime: m.Mtime, Size: m.Size,
			Content: m.Content}
		err := a.mnt.Apply(op, func() error { return a.deliver(st.mb.Path, m.Sub, m.Name, body, m.Mtime) })
		a.unlockAll()
		if err != nil {
			if errors.Is(err, syscall.EEXIST) || errors.Is(err, syscall.ENOENT) {
				rep.Raced++
				return nil
			}
			return fmt.Errorf("restore %s/%s: %w", st.mb.Path, m.Name, err)
		}
		rep.Restored++
		log.Info("restored a message file that vanished behind mailfs's back", "mailbox", st.mb.Path, "name", m.Name,
			"size", m.Size)
	case repairAdd:
		op := &journal.Op{Kind: journal.MessageAdd, Origin: e.Added.Origin, Seq: e.AddedSeq, Time: e.Added.Time,
			Mailbox: st.mb.GUID, Path: st.mb.Path, Key: e.Key, Sub: e.Sub, Flags: e.Flags, Mtime: e.Mtime, Size: e.Size,
			Content: e.Content}
		// Until the add's index commit, a crash would leave its file for
		// the reconcile at restart to take as a local add (journaled, and
		// echoed to the peer): an intent says whose it is, as a segment's
		// adds have (receiver.applySegment). It is kept under this node's
		// ID, apart from the peers' segment intents, and dropped after.
		self := s.cfg.Store.Node()
		if _, err := s.cfg.Store.Commit(ctx, index.IntentOf(self, []journal.Op{*op})); err != nil {
			return err
		}
		err := a.apply(ctx, op, staged{e.Content: body})
		if _, cerr := s.cfg.Store.Commit(ctx, index.IntentOf(self, nil)); err == nil {
			err = cerr
		}
		if err != nil {
			if errors.Is(err, errRace) {
				rep.Raced++
				return nil
			}
			return err
		}
		a.unlockAll()
		rep.Added++
		log.Info("placed a message of the peer whose add never arrived here", "mailbox", st.mb.Path, "key", e.Key,
			"added_by", e.Added.Origin.Short(), "added_seq", e.AddedSeq)
	}
	after, err := s.decide(g, e)
	if err != nil || after.kind != repairFlags {
		return err
	}
	return s.takeFlagsLocked(ctx, after, e, rep, log)
}

func (s *Syncer) takeFlags(ctx context.Context, st localState, e *peerMessage, rep *FullSyncPeerReport, log *slog.Logger) error {
	if len(flagGroups(st.msg, e)) == 0 && !(e.Sub == journal.SubCur && st.msg.Sub == journal.SubNew) {
		return nil
	}
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	now, err := s.decide(st.mb.GUID, e)
	if err != nil {
		return err
	}
	if now.kind != repairFlags {
		rep.Raced++
		return nil
	}
	return s.takeFlagsLocked(ctx, now, e, rep, log)
}

// flagGroups lists, by the stamp of the peer's change, the flags whose
// change on the peer is newer than this node's (rule 6).
func flagGroups(local index.Message, e *peerMessage) map[journal.Stamp][]string {
	names := map[string]bool{}
	for _, f := range e.Flags {
		names[f] = true
	}
	for f := range e.FlagStamps {
		names[f] = true
	}
	groups := map[journal.Stamp][]string{}
	for f := range names {
		ps, ok := e.FlagStamps[f]
		if !ok {
			ps = e.Added // set by the add itself
		}
		if ls, ok := local.FlagStamps[f]; ok && !ls.Less(ps) {
			continue
		}
		if !slices.Contains(e.Flags, f) && !slices.Contains(local.Flags, f) {
			if _, ok := local.FlagStamps[f]; !ok {
				continue // absent on both, and nothing here to date
			}
		}
		groups[ps] = append(groups[ps], f)
	}
	return groups
}

// takeFlagsLocked carries out the newer flag changes of the peer as the
// flag ops that made them (their stamps), and cur/ over new/. applyMu is
// held.
func (s *Syncer) takeFlagsLocked(ctx context.Context, st localState, e *peerMessage, rep *FullSyncPeerReport, log *slog.Logger) error {
	groups := flagGroups(st.msg, e)
	toCur := e.Sub == journal.SubCur && st.msg.Sub == journal.SubNew
	if len(groups) == 0 && !toCur {
		return nil
	}
	stamps := make([]journal.Stamp, 0, len(groups))
	for st := range groups {
		stamps = append(stamps, st)
	}
	sort.Slice(stamps, func(i, j int) bool { return stamps[i].Less(stamps[j]) })
	if len(stamps) == 0 {
		stamps = append(stamps, e.Added)
	}
	before := journal.SortFlags(st.msg.Flags)
	a := s.applier
	defer a.unlockAll()
	for _, stamp := range stamps {
		changed := journal.SortFlags(groups[stamp])
		op := &journal.Op{Kind: journal.MessageFlags, Origin: stamp.Origin, Time: stamp.Time, Mailbox: st.mb.GUID,
			Path: st.mb.Path, Key: e.Key, Sub: e.Sub, Flags: e.Flags, Changed: changed}
		if err := a.apply(ctx, op, staged{}); err != nil {
			if errors.Is(err, errRace) {
				rep.Raced++
				return nil
			}
			return err
		}
		a.unlockAll()
	}
	var now index.Message
	err := s.cfg.Store.View(func(v index.PeerView) error {
		var err error
		now, _, err = v.Message(st.mb.GUID, e.Key)
		return err
	})
	if err != nil {
		return err
	}
	if !slices.Equal(before, journal.SortFlags(now.Flags)) || now.Sub != st.msg.Sub {
		rep.Flagged++
		log.Info("took the peer's newer flags", "mailbox", st.mb.Path, "key", e.Key, "flags", now.Flags, "were", before)
	}
	return nil
}

// restoreMailboxDirs makes the directories of a mailbox whose directory
// vanished behind mailfs's back again (restoreMailboxDir).
func (s *Syncer) restoreMailboxDirs(ctx context.Context, mb index.Mailbox) error {
	if err := s.applier.restoreMailboxDir(ctx, mb); err != nil {
		return err
	}
	s.fullLog().Info("restored a mailbox directory that vanished behind mailfs's back", "mailbox", mb.Path)
	return nil
}

// restoreMailboxDir makes the directories of mailbox mb again; the index
// only clears its mark. Its messages are marked missing first, a page at
// a time: they are not on disk until each is restored, and must not look
// present once the mailbox does.
func (a *applier) restoreMailboxDir(ctx context.Context, mb index.Mailbox) error {
	var batch []index.Event
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		_, err := a.store.Commit(ctx, batch...)
		batch = batch[:0]
		return err
	}
	err := a.store.Messages(mb.GUID, func(m index.Message) error {
		if m.Missing {
			return nil
		}
		batch = append(batch, index.Event{Kind: index.EvMissing, Path: joinRel(mb.Path, subName(m.Sub), m.Name)})
		if len(batch) == fullPage {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		return fmt.Errorf("mark the messages of mailbox %q missing: %w", mb.Path, err)
	}
	op := &journal.Op{Kind: journal.MailboxCreate, Origin: mb.Created.Origin, Seq: mb.CreatedSeq, Time: mb.Created.Time,
		Mailbox: mb.GUID, Path: mb.Path}
	if err := a.mnt.Apply(op, func() error { return a.mkdirMailbox(mb.Path) }); err != nil {
		return fmt.Errorf("restore mailbox directory %q: %w", mb.Path, err)
	}
	return nil
}

// errBodyGone: the peer no longer has the body it listed (it changed
// meanwhile).
var errBodyGone = errors.New("the peer no longer has the body")

// fetchBody asks the peer for the body of e and streams it into a staging
// file, checking its size and that its SHA-256 is its content ID; a body
// that is not is refused and nothing of it kept.
func (s *Syncer) fetchBody(fc *fullConn, g journal.GUID, e *peerMessage, rep *FullSyncPeerReport) (string, error) {
	req := fsRequest{Op: "body", Mailbox: g.String(), Key: e.Key, Content: e.Content.String(), Chunked: true}
	return s.fetch(fc, req, e.Key, e.Size, e.Content, rep)
}

// fetch sends req and streams the body it answers (of size bytes, whose
// SHA-256 must be content) into a staging file.
func (s *Syncer) fetch(fc *fullConn, req fsRequest, what string, size int64, content journal.ContentID, rep *FullSyncPeerReport) (string, error) {
	var hdr fsBody
	if err := fc.call(req, frameBody, 1024, &hdr); err != nil {
		return "", err
	}
	if !hdr.Found {
		return "", errBodyGone
	}
	if hdr.Size != size {
		return "", fmt.Errorf("%w: body of %q is %d bytes, its entry said %d", ErrProtocol, what, hdr.Size, size)
	}
	var rnd [8]byte
	rand.Read(rnd[:])
	p := filepath.Join(s.cfg.StagingDir, "full-"+hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", fmt.Errorf("stage body: %w", err)
	}
	fc.conn.SetDeadline(time.Now().Add(fc.timeout))
	in := deadlineReader{conn: fc.conn, idle: fc.timeout, r: fc.br}
	var n int64
	var h hash.Hash
	if hdr.Chunked {
		// The reader checks every chunk and, before the last one, the
		// content ID.
		n, err = io.Copy(f, journal.NewBodyReader(in, journal.Body{Content: content, Size: size}))
	} else {
		// A mailfs from before chunked answers: raw bytes, hashed here.
		h = sha256.New()
		n, err = io.CopyN(io.MultiWriter(f, h), in, hdr.Size)
	}
	rep.BytesFetched += n
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	switch {
	case errors.Is(err, journal.ErrBadSegment) && !errors.Is(err, io.ErrUnexpectedEOF):
		os.Remove(p)
		return "", fmt.Errorf("%w: body of %q: %w", ErrProtocol, what, err)
	case err != nil:
		os.Remove(p)
		return "", fmt.Errorf("%w: body of %q: %w", errFullUnreachable, what, err)
	case h != nil && journal.ContentID(h.Sum(nil)) != content:
		os.Remove(p)
		return "", fmt.Errorf("%w: body of %q does not match its content ID %s", ErrProtocol, what, content.String()[:16])
	}
	return p, nil
}

// deadlineReader reads r, giving every read idle more time on conn: a
// large body over a slow link is fine as long as it moves.
type deadlineReader struct {
	conn net.Conn
	idle time.Duration
	r    io.Reader
}

func (d deadlineReader) Read(p []byte) (int, error) {
	d.conn.SetReadDeadline(time.Now().Add(d.idle))
	return d.r.Read(p)
}

// fullSyncLoop runs the full sync after an unclean stop, retrying with
// backoff until every peer answered (a peer away for longer is left to the
// periodic runs), and then every interval (0: never).
func (s *Syncer) fullSyncLoop(atStart bool, interval time.Duration) {
	defer s.wg.Done()
	log := s.fullLog()
	retrying, backoff := atStart, time.Second
	wait := interval
	if atStart {
		wait = 0
	}
	started := time.Now()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-time.After(wait):
		}
		reason := "periodic"
		if retrying {
			reason = "unclean stop"
		}
		rep, err := s.FullSync(s.ctx, FullSyncOptions{Reason: reason})
		if s.ctx.Err() != nil {
			return
		}
		if retrying && (err != nil || rep.Total().failed > 0) && (interval <= 0 || time.Since(started)+backoff < interval) {
			log.Info("full sync after the unclean stop did not reach every peer; retrying", "retry_in", backoff)
			wait, backoff = backoff, min(2*backoff, 5*time.Minute)
			continue
		}
		retrying = false
		if interval <= 0 {
			return
		}
		wait = interval
	}
}
