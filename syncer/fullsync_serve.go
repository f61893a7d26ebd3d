package syncer

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"mailfs/index"
	"mailfs/journal"
	"mailfs/maildir"
	"mailfs/peers"
)

// The answering side of the full sync: it only reads, the index and the
// backing files, and checks every request as hostile (a paired peer may
// still be broken or compromised).

// ServeFullSync answers a full sync connection from paired peer id (ALPN
// peers.ProtoFull, handshake done) until it ends. It only reads: the index
// and the backing files.
func (s *Syncer) ServeFullSync(ctx context.Context, conn net.Conn, id journal.NodeID) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(s.ctx, cancel)
	defer stop()
	context.AfterFunc(ctx, func() { conn.Close() })
	log := s.fullLog().With("peer", peers.FormatID(id), "remote", conn.RemoteAddr().String())
	br := bufio.NewReaderSize(conn, 16<<10)
	// Every write gets its own deadline: a large body over a slow link is
	// fine as long as it moves.
	bw := bufio.NewWriterSize(&countingWriter{w: conn, conn: conn, idle: 2 * time.Minute}, 64<<10)
	greeted := false
	// helloAnswered is when the answer to the last request, a hello, was
	// sent (zero when the last request was something else): with the next
	// hello it measures the asker's clock (answerClock).
	var helloAnswered time.Time
	var clock clockSample
	for {
		conn.SetReadDeadline(time.Now().Add(5 * time.Minute))
		var req fsRequest
		if err := readFrame(br, frameRequest, maxRequestFrame, &req); err != nil {
			if !errors.Is(err, io.EOF) && ctx.Err() == nil {
				log.Info("full sync connection ended", "err", err)
			}
			return
		}
		if req.Op == "hello" {
			if c, ok := answerClock(helloAnswered, time.Now(), req.TimeMs); ok && better(clock, c) == c {
				clock = c
				s.noteClock(id, c)
			}
		}
		helloAnswered = time.Time{}
		err := s.answerFull(bw, &req, &greeted)
		if ferr := bw.Flush(); err == nil {
			err = ferr
		}
		if err == nil && req.Op == "hello" {
			helloAnswered = time.Now()
		}
		if err != nil {
			var re *RefusedError
			if errors.As(err, &re) {
				writeFrame(conn, frameRefusal, fsRefusal{Reason: re.Reason})
				log.Warn("refused a peer's full sync request", "op", clip(req.Op), "reason", re.Reason)
			} else {
				log.Info("full sync connection ended", "op", clip(req.Op), "err", err)
			}
			return
		}
	}
}

func refusef(format string, a ...any) error { return &RefusedError{Reason: fmt.Sprintf(format, a...)} }

func clampLimit(n int) int {
	if n <= 0 || n > fullPage {
		return fullPage
	}
	return n
}

// answerFull answers one request. A *RefusedError is sent back and ends
// the connection; another error is the connection's.
func (s *Syncer) answerFull(w io.Writer, req *fsRequest, greeted *bool) error {
	if req.Op != "hello" && !*greeted {
		return refusef("full sync request %q before hello", clip(req.Op))
	}
	switch req.Op {
	case "hello":
		if req.Version != FullSyncVersion {
			return refusef("full sync version %d not supported, this mailfs speaks %d", req.Version, FullSyncVersion)
		}
		*greeted = true
		return writeFrame(w, frameAnswer, fsHello{Version: FullSyncVersion, TimeMs: wallMs(time.Now())})
	case "digests":
		var after journal.GUID
		if req.After != "" {
			var ok bool
			if after, ok = parseGUID(req.After); !ok {
				return refusef("invalid mailbox GUID %q", clip(req.After))
			}
		}
		var ds []index.MailboxDigest
		more := false
		if req.Only != "" {
			g, ok := parseGUID(req.Only)
			if !ok {
				return refusef("invalid mailbox GUID %q", clip(req.Only))
			}
			d, have, err := s.cfg.Store.MailboxDigestOf(g)
			if err != nil {
				return err
			}
			if have {
				ds = append(ds, d)
			}
		} else {
			var err error
			if ds, more, err = s.cfg.Store.MailboxDigests(after, clampLimit(req.Limit)); err != nil {
				return err
			}
		}
		page := fsDigests{Mailboxes: make([]fsDigest, 0, len(ds)), More: more}
		for _, d := range ds {
			page.Mailboxes = append(page.Mailboxes, fsDigest{GUID: d.GUID.String(), Path: d.Path, Count: d.Count,
				Digest: hex.EncodeToString(d.Digest[:])})
		}
		return writeFrame(w, frameAnswer, page)
	case "messages":
		g, ok := parseGUID(req.Mailbox)
		if !ok {
			return refusef("invalid mailbox GUID %q", clip(req.Mailbox))
		}
		if req.After != "" && !validKey(req.After) {
			return refusef("invalid message key %q", clip(req.After))
		}
		ms, more, err := s.cfg.Store.PresentMessages(g, req.After, clampLimit(req.Limit))
		if err != nil {
			return err
		}
		page := fsMessages{Messages: make([]fsMessage, 0, len(ms)), More: more}
		for _, m := range ms {
			page.Messages = append(page.Messages, fsMessage{Key: m.Key, Content: m.Content.String(), Sub: m.Sub,
				Flags: m.Flags, FlagStamps: m.FlagStamps, Mtime: m.Mtime, Size: m.Size, Added: m.Added, AddedSeq: m.AddedSeq})
		}
		return writeFrame(w, frameAnswer, page)
	case "body":
		return s.answerBody(w, req)
	case "file":
		return s.answerFile(w, req)
	}
	return refusef("unknown full sync request %q", clip(req.Op))
}

// answerBody streams the body of a message this node has on disk as its
// index knows it; anything else is answered "not found".
func (s *Syncer) answerBody(w io.Writer, req *fsRequest) error {
	g, ok := parseGUID(req.Mailbox)
	if !ok || !validKey(req.Key) {
		return refusef("invalid body request for %q in %q", clip(req.Key), clip(req.Mailbox))
	}
	c, ok := parseContent(req.Content)
	if !ok {
		return refusef("invalid content ID %q", clip(req.Content))
	}
	var rel string
	var size int64
	err := s.cfg.Store.View(func(v index.PeerView) error {
		mb, ok, err := v.Mailbox(g)
		if err != nil || !ok || mb.Missing {
			return err
		}
		m, ok, err := v.Message(mb.GUID, req.Key)
		if err != nil || !ok || m.Missing || m.Content != c {
			return err
		}
		rel, size = joinRel(mb.Path, subName(m.Sub), m.Name), m.Size
		return nil
	})
	if err != nil {
		return err
	}
	return s.sendFile(w, rel, size, req.Chunked)
}

// answerFile streams the plain file the request names if this node has it
// in the version (content ID) asked for.
func (s *Syncer) answerFile(w io.Writer, req *fsRequest) error {
	if !cleanRel(req.Key, false) || maildir.Classify(req.Key, false).Kind != maildir.KindPlainFile {
		return refusef("invalid file path %q", clip(req.Key))
	}
	c, ok := parseContent(req.Content)
	if !ok {
		return refusef("invalid content ID %q", clip(req.Content))
	}
	var f index.File
	err := s.cfg.Store.View(func(v index.PeerView) error {
		var err error
		f, ok, err = v.File(req.Key)
		return err
	})
	if err != nil {
		return err
	}
	if !ok || f.Content != c || f.LinkTarget != "" {
		return writeFrame(w, frameBody, fsBody{})
	}
	return s.sendFile(w, req.Key, f.Size, req.Chunked)
}

// sendFile answers the backing file rel, if it is a regular file of size
// bytes, else "not found": as a chunk stream when the asker can read one.
func (s *Syncer) sendFile(w io.Writer, rel string, size int64, chunked bool) error {
	if rel == "" {
		return writeFrame(w, frameBody, fsBody{})
	}
	f, err := os.OpenFile(filepath.Join(s.cfg.Root, filepath.FromSlash(rel)), os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return writeFrame(w, frameBody, fsBody{})
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() || fi.Size() != size {
		return writeFrame(w, frameBody, fsBody{})
	}
	if err := writeFrame(w, frameBody, fsBody{Found: true, Size: size, Chunked: chunked}); err != nil {
		return err
	}
	if chunked {
		if err := journal.WriteBody(w, size, f); err != nil {
			return fmt.Errorf("send body %s: %w", rel, err)
		}
		return nil
	}
	n, err := io.CopyN(w, f, size)
	if err != nil {
		return fmt.Errorf("send body %s (%d of %d bytes): %w", rel, n, size, err)
	}
	return nil
}
