package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sort"
	"time"

	"mailfs/index"
	"mailfs/journal"
	"mailfs/peers"
	"mailfs/syncer"
)

// The control socket (STORE/mailfs.sock, 0600) answers one JSON request
// per connection: {"cmd":"status"}, {"cmd":"journal","since":N} or
// {"cmd":"pair-join","code":CODE}. A failure is answered with
// {"error":MESSAGE,"exit":CODE} (exit: the code of design §9, 0 meaning 1).
type controlRequest struct {
	Cmd   string `json:"cmd"`
	Since uint64 `json:"since,omitempty"`
	// Address is what pair-join tells the inviter to dial (empty: the
	// listen address).
	Address string `json:"address,omitempty"`
	// TimeoutMs bounds a sync request.
	TimeoutMs int64 `json:"timeout_ms,omitempty"`
	// Code is the invite code of pair-join (a secret: never logged).
	Code string `json:"code,omitempty"`
	// Pattern asks status for the users it matches (see matchUser).
	Pattern string `json:"pattern,omitempty"`
	// Mailbox restricts a full-sync request to the mailbox at this path.
	Mailbox string `json:"mailbox,omitempty"`
}

type controlError struct {
	Error string `json:"error"`
	Exit  int    `json:"exit,omitempty"`
}

type statusNode struct {
	ID         string `json:"id"`
	Name       string `json:"name"`
	Listen     string `json:"listen"`
	JournalSeq uint64 `json:"journal_seq"`
	Mailboxes  int64  `json:"mailboxes"`
	Messages   int64  `json:"messages"`
	Mounted    bool   `json:"mounted"`
	Mountpoint string `json:"mountpoint,omitempty"`
	Maildir    string `json:"maildir"`
}

type statusPeer struct {
	ID          string  `json:"id"`
	Name        string  `json:"name"`
	Address     string  `json:"address"`
	Connected   bool    `json:"connected"`
	AckedSeq    uint64  `json:"acked_seq"`
	LagOps      uint64  `json:"lag_ops"`
	LastSuccess *string `json:"last_success"`
	LastFailure *string `json:"last_failure"`
	LastError   string  `json:"last_error"`
	// LastFastSync is when the peer last acknowledged every op journaled
	// at that moment (null: not since this node started).
	LastFastSync *string `json:"last_fast_sync"`
	// LastFullSync is when this node's last full sync (every mailbox)
	// with the peer ended, LastFullSyncOK whether it went through, and
	// LastFullSyncResult what it repaired or why it failed; kept in the
	// store, so also known unmounted and across restarts.
	LastFullSync       *string `json:"last_full_sync"`
	LastFullSyncOK     bool    `json:"last_full_sync_ok"`
	LastFullSyncResult string  `json:"last_full_sync_result"`
	// ClockSkewMs is the peer's wall clock minus this node's, in ms (null:
	// not measured since this node started), good to ClockSkewRTTMs/2,
	// measured at ClockSkewMeasured.
	ClockSkewMs       *int64  `json:"clock_skew_ms"`
	ClockSkewRTTMs    *int64  `json:"clock_skew_rtt_ms"`
	ClockSkewMeasured *string `json:"clock_skew_measured"`
	// LagBytes, LagSeconds and OldestUnacked say how much and how old is
	// what the peer lacks (oldest_unacked null, lag 0: it has everything).
	LagBytes      int64   `json:"lag_bytes"`
	LagSeconds    float64 `json:"lag_seconds"`
	OldestUnacked *string `json:"oldest_unacked"`
	// CatchUp is the progress of a catch-up running now (a first sync to
	// an empty peer, or one back from a long outage); null if none.
	CatchUp *statusCatchUp `json:"catch_up"`
	// Inbound: the peer is connected to push its own journal here.
	Inbound         bool  `json:"inbound"`
	BytesSent       int64 `json:"bytes_sent"`
	BytesReceived   int64 `json:"bytes_received"`
	OpsSent         int64 `json:"ops_sent"`
	OpsApplied      int64 `json:"ops_applied"`
	SegmentsRefused int64 `json:"segments_refused"`
}

func rfc3339(t time.Time) *string {
	if t.IsZero() {
		return nil
	}
	s := t.UTC().Format(time.RFC3339Nano)
	return &s
}

type statusReply struct {
	Node  statusNode   `json:"node"`
	Peers []statusPeer `json:"peers"`
	// Users is there when status was given a PATTERN: the matching users,
	// by name.
	Users []statusUser `json:"users,omitempty"`
}

// statusCatchUp is a running catch-up's progress.
type statusCatchUp struct {
	Started    string  `json:"started"`
	DoneOps    uint64  `json:"done_ops"`
	TotalOps   uint64  `json:"total_ops"`
	SentBytes  int64   `json:"sent_bytes"`
	TotalBytes int64   `json:"total_bytes"`
	OpsPerSec  float64 `json:"ops_per_s"`
	ETASeconds float64 `json:"eta_seconds"`
}

// statusUser is one user (the directory holding a Maildir) of the tree.
type statusUser struct {
	User      string `json:"user"`
	Mailboxes int64  `json:"mailboxes"`
	Messages  int64  `json:"messages"`
	// Pending counts, by peer ID, the user's ops that peer lacks.
	Pending map[string]uint64 `json:"pending"`
}

// journalLine is one op as `mailfs journal --json` prints it.
type journalLine struct {
	Seq        uint64   `json:"seq"`
	Kind       string   `json:"kind"`
	Origin     string   `json:"origin"`
	Time       string   `json:"time"`
	Mailbox    string   `json:"mailbox,omitempty"`
	Target     string   `json:"target,omitempty"`
	Path       string   `json:"path,omitempty"`
	NewPath    string   `json:"new_path,omitempty"`
	From       string   `json:"from,omitempty"`
	Key        string   `json:"key,omitempty"`
	NewKey     string   `json:"new_key,omitempty"`
	Replaced   string   `json:"replaced,omitempty"`
	Name       string   `json:"name,omitempty"`
	LinkTarget string   `json:"link_target,omitempty"`
	Sub        string   `json:"sub,omitempty"`
	Flags      []string `json:"flags,omitempty"`
	Mtime      int64    `json:"mtime,omitempty"`
	Size       int64    `json:"size,omitempty"`
	Content    string   `json:"content,omitempty"`
	// Seen: what a mailbox delete or create had applied; the version a
	// plain-file write or delete replaced.
	Seen map[string]uint64 `json:"seen,omitempty"`
}

func opLine(op *journal.Op) journalLine {
	l := journalLine{Seq: op.Seq, Kind: op.Kind.String(), Origin: op.Origin.String(), Time: op.Time.String(),
		Path: op.Path, NewPath: op.NewPath, From: op.From, Key: op.Key, NewKey: op.NewKey, Replaced: op.Replaced,
		Name: op.Name, LinkTarget: op.LinkTarget, Sub: op.Sub.String(), Flags: op.Flags, Mtime: op.Mtime, Size: op.Size}
	if !op.Mailbox.IsZero() {
		l.Mailbox = op.Mailbox.String()
	}
	if !op.Target.IsZero() {
		l.Target = op.Target.String()
	}
	if !op.Content.IsZero() {
		l.Content = op.Content.String()
	}
	if len(op.Seen) > 0 {
		l.Seen = map[string]uint64{}
		for o, s := range op.Seen {
			l.Seen[o.String()] = s
		}
	}
	return l
}

// mailboxLine is one mailbox as `mailfs mailboxes --json` prints it.
type mailboxLine struct {
	GUID     string `json:"guid"`
	Path     string `json:"path"`
	Messages int64  `json:"messages"`
	Missing  bool   `json:"missing,omitempty"`
}

func mailboxLineOf(mb index.Mailbox) mailboxLine {
	return mailboxLine{GUID: mb.GUID.String(), Path: mb.Path, Messages: mb.Messages, Missing: mb.Missing}
}

func nodeStatus(st *openedStore) statusNode {
	mb, msgs := st.index.Counts()
	return statusNode{ID: peers.FormatID(st.index.Node()), Name: st.index.Name(), Listen: st.listenAddr(),
		JournalSeq: st.index.Seq(), Mailboxes: mb, Messages: msgs, Maildir: st.maildir}
}

// buildStatus is what `mailfs status` shows: the node, its paired peers
// (live replication state from the syncer when mounted; otherwise what the
// store says: nothing is connected, and what each peer has acknowledged is
// learned only when it connects), what each lacks, and with a pattern the
// matching users with their pending ops.
func buildStatus(st *openedStore, pattern string) (statusReply, error) {
	rep := statusReply{Node: nodeStatus(st), Peers: []statusPeer{}}
	var ids []journal.NodeID // rep.Peers' IDs
	if st.sync != nil {
		for _, p := range st.sync.Status() {
			ids = append(ids, p.ID)
			rep.Peers = append(rep.Peers, statusPeer{ID: peers.FormatID(p.ID), Name: p.Name, Address: p.Address,
				Connected: p.Connected, AckedSeq: p.AckedSeq, LagOps: p.LagOps, LastSuccess: rfc3339(p.LastSuccess),
				LastFailure: rfc3339(p.LastFailure), LastError: p.LastError, Inbound: p.Inbound, BytesSent: p.BytesSent,
				BytesReceived: p.BytesRecv, OpsSent: p.OpsSent, OpsApplied: p.OpsApplied, SegmentsRefused: p.Refused,
				CatchUp: catchUpOf(p.CatchUp), LastFastSync: rfc3339(p.LastFastSync)})
			if !p.ClockMeasured.IsZero() {
				sp := &rep.Peers[len(rep.Peers)-1]
				skew, rtt := p.ClockSkew.Milliseconds(), p.ClockRTT.Milliseconds()
				sp.ClockSkewMs, sp.ClockSkewRTTMs, sp.ClockSkewMeasured = &skew, &rtt, rfc3339(p.ClockMeasured)
			}
		}
	} else {
		ps, err := st.index.ListPeers()
		if err != nil {
			return rep, fmt.Errorf("list peers: %w", err)
		}
		for _, p := range ps {
			ids = append(ids, p.ID)
			rep.Peers = append(rep.Peers, statusPeer{ID: peers.FormatID(p.ID), Name: p.Name, Address: p.Address})
		}
	}
	for i, id := range ids {
		p := &rep.Peers[i]
		fs, err := st.index.PeerSyncOf(id)
		if err != nil {
			return rep, err
		}
		p.LastFullSync, p.LastFullSyncOK, p.LastFullSyncResult = rfc3339(fs.LastFullSync), fs.FullSyncOK, fs.FullSyncResult
	}
	acked := make([]uint64, len(rep.Peers))
	for i, p := range rep.Peers {
		acked[i] = p.AckedSeq
	}
	lags, byUser, err := pendingOps(st.index, acked, pattern != "")
	if err != nil {
		return rep, err
	}
	now := time.Now()
	for i := range rep.Peers {
		p, l := &rep.Peers[i], lags[i]
		// The journal walk is the truth for the ops; the syncer's figure
		// is read a moment earlier and may be behind by what committed since.
		p.LagOps, p.LagBytes = l.Ops, l.Bytes
		if l.Ops > 0 {
			p.OldestUnacked = rfc3339(l.Oldest)
			p.LagSeconds = max(0, now.Sub(l.Oldest).Seconds())
		}
	}
	if pattern != "" {
		rep.Users, err = usersMatching(st.index, pattern, rep.Peers, byUser)
	}
	return rep, err
}

func catchUpOf(c *syncer.CatchUp) *statusCatchUp {
	if c == nil {
		return nil
	}
	return &statusCatchUp{Started: *rfc3339(c.Started), DoneOps: c.DoneOps, TotalOps: c.TotalOps, SentBytes: c.SentBytes,
		TotalBytes: c.TotalBytes, OpsPerSec: c.OpsPerSec, ETASeconds: c.ETA.Seconds()}
}

// usersMatching lists the users matching pattern with their mailboxes,
// messages and pending ops per peer, in name order.
func usersMatching(ix *index.Store, pattern string, ps []statusPeer, pending map[string][]uint64) ([]statusUser, error) {
	byName := map[string]*statusUser{}
	get := func(u string) *statusUser {
		su := byName[u]
		if su == nil {
			su = &statusUser{User: u, Pending: map[string]uint64{}}
			for _, p := range ps {
				su.Pending[p.ID] = 0
			}
			byName[u] = su
		}
		return su
	}
	err := ix.Mailboxes(func(mb index.Mailbox) error {
		if u := userOf(mb.Path); matchUser(pattern, u) {
			su := get(u)
			su.Mailboxes++
			su.Messages += mb.Messages
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list mailboxes: %w", err)
	}
	for u, counts := range pending {
		if !matchUser(pattern, u) {
			continue
		}
		su := get(u)
		for i, n := range counts {
			su.Pending[ps[i].ID] += n
		}
	}
	out := make([]statusUser, 0, len(byName))
	for _, su := range byName {
		out = append(out, *su)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].User < out[j].User })
	return out, nil
}

type controlServer struct {
	ln         net.Listener
	st         *openedStore
	mountpoint string
	log        *slog.Logger
	ctx        context.Context // canceled by Close: ends a pair-join in flight
	cancel     context.CancelFunc
}

func startControl(st *openedStore, mountpoint string, log *slog.Logger) (*controlServer, error) {
	p := st.paths.socket()
	if c, err := net.DialTimeout("unix", p, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("control socket %s answers: another mailfs serves this store", p)
	}
	os.Remove(p)
	ln, err := net.Listen("unix", p)
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", p, err)
	}
	if err := os.Chmod(p, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket %s: %w", p, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cs := &controlServer{ln: ln, st: st, mountpoint: mountpoint, log: log, ctx: ctx, cancel: cancel}
	go cs.serve()
	return cs, nil
}

func (cs *controlServer) Close() {
	cs.cancel()
	cs.ln.Close()
	os.Remove(cs.st.paths.socket())
}

func (cs *controlServer) serve() {
	for {
		c, err := cs.ln.Accept()
		if err != nil {
			return
		}
		go cs.handle(c)
	}
}

func (cs *controlServer) handle(c net.Conn) {
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var req controlRequest
	if err := json.NewDecoder(bufio.NewReader(io64k(c))).Decode(&req); err != nil {
		return
	}
	c.SetReadDeadline(time.Time{})
	w := bufio.NewWriter(c)
	defer w.Flush()
	enc := json.NewEncoder(w)
	switch req.Cmd {
	case "status":
		rep, err := buildStatus(cs.st, req.Pattern)
		if err != nil {
			enc.Encode(controlError{Error: err.Error()})
			return
		}
		rep.Node.Mounted, rep.Node.Mountpoint = true, cs.mountpoint
		enc.Encode(rep)
	case "pair-join":
		self := peers.PeerInfo{Name: cs.st.index.Name(), Address: cs.st.listenAddr()}
		if req.Address != "" {
			self.Address = req.Address
		}
		p, err := joinAndPin(cs.ctx, cs.st.ident, cs.st.index, self, req.Code, func(p peers.Peer) {
			if cs.st.sync != nil {
				cs.st.sync.AddPeer(p)
			}
		})
		if err != nil {
			code := exitFailure
			var ee *exitError
			if errors.As(err, &ee) {
				code = ee.code
			}
			cs.log.Warn("pair join failed", "component", "peers", "err", err)
			enc.Encode(controlError{Error: err.Error(), Exit: code})
			return
		}
		cs.log.Info("paired with node", "component", "peers", "peer_name", p.Name, "peer", p.ID, "address", p.Address)
		enc.Encode(p)
	case "sync":
		seq := cs.st.index.Seq()
		ctx, cancel := context.WithTimeout(cs.ctx, time.Duration(req.TimeoutMs)*time.Millisecond)
		defer cancel()
		if err := cs.st.sync.WaitSynced(ctx, seq); err != nil {
			code := exitTemporary
			if cs.ctx.Err() != nil {
				code = exitFailure
			}
			msg := fmt.Sprintf("not every peer acknowledged journal seq %d within %s", seq, time.Duration(req.TimeoutMs)*time.Millisecond)
			for _, p := range cs.st.sync.Status() {
				if p.AckedSeq < seq {
					msg += fmt.Sprintf("; peer %s (%s) acknowledged %d", orDash(p.Name), peers.FormatID(p.ID), p.AckedSeq)
					if p.LastError != "" {
						msg += ", last error: " + p.LastError
					}
				}
			}
			enc.Encode(controlError{Error: msg, Exit: code})
			return
		}
		enc.Encode(map[string]uint64{"synced_seq": seq})
	case "full-sync":
		cs.fullSync(enc, req)
	case "mailboxes":
		err := cs.st.index.Mailboxes(func(mb index.Mailbox) error { return enc.Encode(mailboxLineOf(mb)) })
		if err != nil {
			enc.Encode(controlError{Error: err.Error()})
		}
	case "journal":
		err := cs.st.index.Ops(req.Since, func(op *journal.Op) error { return enc.Encode(opLine(op)) })
		if err != nil {
			enc.Encode(map[string]string{"error": err.Error()})
		}
	default:
		enc.Encode(map[string]string{"error": "unknown command " + req.Cmd})
	}
}

func io64k(c net.Conn) *limitedConn { return &limitedConn{c: c, n: 64 << 10} }

type limitedConn struct {
	c net.Conn
	n int
}

func (l *limitedConn) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errors.New("control request too large")
	}
	if len(p) > l.n {
		p = p[:l.n]
	}
	n, err := l.c.Read(p)
	l.n -= n
	return n, err
}

var errNotRunning = errors.New("mailfs is not running for this store")

// controlCall sends req to a running mailfs and hands each reply line to fn.
func controlCall(ctx context.Context, paths storePaths, req controlRequest, fn func(json.RawMessage) error) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", paths.socket())
	if err != nil {
		return errNotRunning
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return fmt.Errorf("control socket %s: %w", paths.socket(), err)
	}
	dec := json.NewDecoder(bufio.NewReader(c))
	for {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			if errors.Is(err, ioEOF) {
				return nil
			}
			return fmt.Errorf("control socket %s: %w", paths.socket(), err)
		}
		var e controlError
		if json.Unmarshal(raw, &e) == nil && e.Error != "" {
			err := fmt.Errorf("mailfs daemon: %s", e.Error)
			if e.Exit != 0 {
				return &exitError{code: e.Exit, err: err}
			}
			return err
		}
		if err := fn(raw); err != nil {
			return err
		}
	}
}

// openForQuery gives a read-only view of a store that is not mounted.
func openForQuery(paths storePaths, log *slog.Logger) (*openedStore, error) {
	m, err := paths.readMarker()
	if errors.Is(err, errNoMarker) {
		return nil, fmt.Errorf("%s is not a mailfs store (no %s; run 'mailfs init')", paths.Dir, markerName)
	}
	if err != nil {
		return nil, err
	}
	ix, err := index.Open(paths.index(), index.Options{ReadOnly: true, Logger: log})
	if err != nil {
		return nil, explainIndexOpen(err, paths.Dir)
	}
	return &openedStore{paths: paths, marker: m, maildir: paths.maildir(m), index: ix}, nil
}
