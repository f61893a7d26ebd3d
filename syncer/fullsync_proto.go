package syncer

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"

	"mailfs/journal"
)

// The full sync protocol (ALPN peers.ProtoFull) is request and answer, one
// at a time, on its own connection: the node that runs the full sync asks,
// its peer answers. Each is a frame: a type byte, a 4-byte big-endian
// length and that many bytes of JSON. A body answer is a frame saying its
// size followed by exactly that many raw bytes. Everything is paged, so
// neither side ever holds more than a page: the asker names where the last
// page ended and how many entries it wants, and refuses a page that is
// larger, out of order or inconsistent with what the peer said before.
//
// A body request that says "chunked" gets the body as a chunk stream
// instead (journal.WriteBody: the chunks of a replication segment,
// compressed where that makes them smaller), and its answer says so. A
// mailfs from before ignores the field and sends raw bytes, which the asker
// still reads; so the protocol version stays.

// FullSyncVersion is the version of the full sync protocol; a peer that
// speaks another is refused with both named.
const FullSyncVersion uint16 = 1

const (
	frameRequest byte = 'Q'
	frameAnswer  byte = 'A'
	frameRefusal byte = 'R'
	frameBody    byte = 'B'
)

// Limits of the full sync protocol. A frame is read only after its length
// is checked, so a peer cannot make this node allocate more than
// maxFullFrame for one; a page holds at most fullPage entries.
const (
	maxFullFrame      = 4 << 20
	maxRequestFrame   = 64 << 10
	fullPage          = 128
	maxFullMailboxes  = 1 << 20 // mailboxes one peer may list
	maxMailboxCount   = 1 << 26 // messages one mailbox may claim
	maxFlagsPerMsg    = 64
	maxFlagStampNames = 128
)

type fsRequest struct {
	Op      string `json:"op"` // hello, digests, messages, body
	Version uint16 `json:"version,omitempty"`
	// After is where the previous page ended: a mailbox GUID (digests)
	// or a message key (messages).
	After string `json:"after,omitempty"`
	// Only restricts digests to one mailbox GUID.
	Only    string `json:"only,omitempty"`
	Mailbox string `json:"mailbox,omitempty"`
	Key     string `json:"key,omitempty"`
	Content string `json:"content,omitempty"`
	Limit   int    `json:"limit,omitempty"`
	// Chunked asks for a body as a chunk stream.
	Chunked bool `json:"chunked,omitempty"`
	// TimeMs is the asker's wall clock (unix ms) when it sent a hello: a
	// sample of its clock for the answering side (see clock.go).
	TimeMs int64 `json:"time_ms,omitempty"`
}

type fsHello struct {
	Version uint16 `json:"version"`
	// TimeMs is the answering side's wall clock (unix ms): the asker
	// estimates the skew from it (see clock.go). A mailfs from before it
	// leaves it out, and the skew stays unknown.
	TimeMs int64 `json:"time_ms,omitempty"`
}

type fsDigest struct {
	GUID   string `json:"guid"`
	Path   string `json:"path"`
	Count  int64  `json:"count"`
	Digest string `json:"digest"`
}

type fsDigests struct {
	Mailboxes []fsDigest `json:"mailboxes"`
	More      bool       `json:"more"`
}

type fsMessage struct {
	Key        string                   `json:"key"`
	Content    string                   `json:"content"`
	Sub        journal.Sub              `json:"sub"`
	Flags      []string                 `json:"flags"`
	FlagStamps map[string]journal.Stamp `json:"flag_stamps,omitempty"`
	Mtime      int64                    `json:"mtime"`
	Size       int64                    `json:"size"`
	Added      journal.Stamp            `json:"added"`
	AddedSeq   uint64                   `json:"added_seq"`
}

type fsMessages struct {
	Messages []fsMessage `json:"messages"`
	More     bool        `json:"more"`
}

type fsBody struct {
	Found bool  `json:"found"`
	Size  int64 `json:"size"`
	// Chunked: the body follows as a chunk stream, not as Size raw bytes.
	Chunked bool `json:"chunked,omitempty"`
}

type fsRefusal struct {
	Reason string `json:"reason"`
}

func writeFrame(w io.Writer, typ byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	h := make([]byte, 5, 5+len(b))
	h[0] = typ
	binary.BigEndian.PutUint32(h[1:], uint32(len(b)))
	_, err = w.Write(append(h, b...))
	return err
}

// readFrame reads one frame of at most max bytes into v. A refusal frame is
// returned as an error wrapping ErrProtocol, with the peer's reason.
func readFrame(r io.Reader, want byte, max int, v any) error {
	var h [5]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return err
	}
	n := binary.BigEndian.Uint32(h[1:])
	if int64(n) > int64(max) {
		return fmt.Errorf("%w: frame of %d bytes, at most %d allowed", ErrProtocol, n, max)
	}
	if h[0] != want && h[0] != frameRefusal {
		return fmt.Errorf("%w: frame type %q, expected %q", ErrProtocol, h[0], want)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return err
	}
	if h[0] == frameRefusal {
		var rf fsRefusal
		if err := json.Unmarshal(b, &rf); err != nil {
			return fmt.Errorf("%w: refusal: %v", ErrProtocol, err)
		}
		if len(rf.Reason) > maxReason {
			rf.Reason = rf.Reason[:maxReason]
		}
		return fmt.Errorf("%w: the peer refused the request: %s", ErrProtocol, rf.Reason)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: frame: %v", ErrProtocol, err)
	}
	return nil
}

func parseGUID(s string) (journal.GUID, bool) {
	var g journal.GUID
	if len(s) != 2*len(g) {
		return g, false
	}
	if _, err := hex.Decode(g[:], []byte(s)); err != nil {
		return g, false
	}
	return g, !g.IsZero()
}

func parseContent(s string) (journal.ContentID, bool) {
	var c journal.ContentID
	if len(s) != 2*len(c) {
		return c, false
	}
	if _, err := hex.Decode(c[:], []byte(s)); err != nil {
		return c, false
	}
	return c, !c.IsZero()
}

// checkDigests validates a digest page answering a request for at most
// limit mailboxes after after: GUIDs valid and strictly ascending past
// after, paths inside the store, counts and digests well-formed.
func checkDigests(page *fsDigests, after journal.GUID, limit int, only journal.GUID) ([]peerDigest, error) {
	if len(page.Mailboxes) > limit {
		return nil, fmt.Errorf("%w: %d mailboxes in a page of at most %d", ErrProtocol, len(page.Mailboxes), limit)
	}
	if !only.IsZero() && (len(page.Mailboxes) > 1 || page.More) {
		return nil, fmt.Errorf("%w: %d mailboxes listed, only %s was asked for", ErrProtocol, len(page.Mailboxes), only)
	}
	out := make([]peerDigest, 0, len(page.Mailboxes))
	prev := after
	for _, d := range page.Mailboxes {
		g, ok := parseGUID(d.GUID)
		if !ok {
			return nil, fmt.Errorf("%w: mailbox GUID %q invalid", ErrProtocol, clip(d.GUID))
		}
		if string(g[:]) <= string(prev[:]) {
			return nil, fmt.Errorf("%w: mailbox %s out of order (after %s)", ErrProtocol, g, prev)
		}
		prev = g
		if !validMailboxPath(d.Path) {
			return nil, fmt.Errorf("%w: mailbox %s has an invalid path %q", ErrProtocol, g, clip(d.Path))
		}
		if d.Count < 0 || d.Count > maxMailboxCount {
			return nil, fmt.Errorf("%w: mailbox %s claims %d messages (at most %d)", ErrProtocol, g, d.Count, maxMailboxCount)
		}
		var sum [32]byte
		if len(d.Digest) != 64 {
			return nil, fmt.Errorf("%w: mailbox %s digest %q invalid", ErrProtocol, g, clip(d.Digest))
		}
		if _, err := hex.Decode(sum[:], []byte(d.Digest)); err != nil {
			return nil, fmt.Errorf("%w: mailbox %s digest %q invalid", ErrProtocol, g, clip(d.Digest))
		}
		out = append(out, peerDigest{GUID: g, Path: d.Path, Count: d.Count, Digest: sum})
	}
	if page.More && len(page.Mailboxes) == 0 {
		return nil, fmt.Errorf("%w: an empty digest page that claims more follow", ErrProtocol)
	}
	return out, nil
}

type peerDigest struct {
	GUID   journal.GUID
	Path   string
	Count  int64
	Digest [32]byte
}

// peerMessage is a validated entry of a peer's key list.
type peerMessage struct {
	Key        string
	Content    journal.ContentID
	Sub        journal.Sub
	Flags      []string
	FlagStamps map[string]journal.Stamp
	Mtime      int64
	Size       int64
	Added      journal.Stamp
	AddedSeq   uint64
}

// checkMessages validates a page of a peer's key list: at most limit
// entries, keys valid Maildir keys strictly ascending past after, no more
// in all than the count the peer's digest claimed (seen counts the earlier
// pages), and every field within its limits.
func checkMessages(page *fsMessages, after string, limit int, seen, claimed int64, maxBody int64) ([]peerMessage, error) {
	if len(page.Messages) > limit {
		return nil, fmt.Errorf("%w: %d messages in a page of at most %d", ErrProtocol, len(page.Messages), limit)
	}
	if seen+int64(len(page.Messages)) > claimed {
		return nil, fmt.Errorf("%w: more messages listed than the %d the mailbox's digest claimed", ErrProtocol, claimed)
	}
	if page.More && len(page.Messages) == 0 {
		return nil, fmt.Errorf("%w: an empty message page that claims more follow", ErrProtocol)
	}
	out := make([]peerMessage, 0, len(page.Messages))
	prev := after
	for _, m := range page.Messages {
		if !validKey(m.Key) {
			return nil, fmt.Errorf("%w: message key %q invalid", ErrProtocol, clip(m.Key))
		}
		if m.Key <= prev {
			return nil, fmt.Errorf("%w: message %q out of order (after %q)", ErrProtocol, m.Key, prev)
		}
		prev = m.Key
		c, ok := parseContent(m.Content)
		if !ok {
			return nil, fmt.Errorf("%w: message %q content ID %q invalid", ErrProtocol, m.Key, clip(m.Content))
		}
		if m.Sub != journal.SubNew && m.Sub != journal.SubCur {
			return nil, fmt.Errorf("%w: message %q subdirectory %d invalid", ErrProtocol, m.Key, m.Sub)
		}
		if m.Size < 0 || m.Size > maxBody {
			return nil, fmt.Errorf("%w: message %q size %d out of range", ErrProtocol, m.Key, m.Size)
		}
		if len(m.Flags) > maxFlagsPerMsg || len(m.FlagStamps) > maxFlagStampNames || !validFlags(m.Flags) {
			return nil, fmt.Errorf("%w: message %q flags invalid", ErrProtocol, m.Key)
		}
		for f := range m.FlagStamps {
			if !validFlags([]string{f}) {
				return nil, fmt.Errorf("%w: message %q flag stamp name %q invalid", ErrProtocol, m.Key, clip(f))
			}
		}
		if m.Added.Origin.IsZero() || m.AddedSeq == 0 {
			return nil, fmt.Errorf("%w: message %q has no add stamp", ErrProtocol, m.Key)
		}
		out = append(out, peerMessage{Key: m.Key, Content: c, Sub: m.Sub, Flags: journal.SortFlags(dropUnknownLetters(m.Flags)),
			FlagStamps: m.FlagStamps, Mtime: m.Mtime, Size: m.Size, Added: m.Added, AddedSeq: m.AddedSeq})
	}
	return out, nil
}

// clip shortens what a hostile peer sent before it goes into a log line.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
