package index

import (
	"encoding/binary"
	"encoding/json"
	"fmt"

	"mailfs/journal"
)

// Key prefixes. Records under them are a version byte followed by JSON.
const (
	pMailbox     = "mb/" // + GUID → mailboxRec
	pMailboxPath = "mp/" // + path → GUID
	pMessage     = "ms/" // + GUID + key → messageRec
	pSubscribed  = "sb/" // + dir + "\x00" + name → nothing
	pFile        = "pf/" // + path → fileRec
	pDir         = "pd/" // + path → dirRec
	pTombMessage = "tm/ms/"
	pTombMailbox = "tm/mb/"
	pJournal     = "j/"  // + seq (8 bytes big endian) → encoded op
	pOrphans     = "or/" // + GUID: messages of a deleted mailbox left to sweep
	pPeer        = "pe/" // + node ID: paired peer (node-local, never journaled) → peerRec

	kNode    = "meta/node"
	kName    = "meta/name"
	kListen  = "meta/listen"
	kEpoch   = "meta/epoch"
	kSeq     = "meta/seq"
	kHLC     = "meta/hlc"
	kCounts  = "meta/counts"
	kVersion = "meta/format"
	kClean   = "meta/clean"  // 1 after a clean Close, 0 while open
	kCommit  = "meta/commit" // number of the last committed batch (WAL replay)
)

// formatVersion is the index's on-disk format. A store written by a newer
// format is refused, never misread.
const formatVersion = 1

const recVersion byte = 1

func mailboxKey(g journal.GUID) []byte    { return append([]byte(pMailbox), g[:]...) }
func mailboxPathKey(p string) []byte      { return []byte(pMailboxPath + p) }
func dirKey(p string) []byte              { return []byte(pDir + p) }
func fileKey(p string) []byte             { return []byte(pFile + p) }
func subKey(dir, name string) []byte      { return []byte(pSubscribed + dir + "\x00" + name) }
func subPrefix(dir string) []byte         { return []byte(pSubscribed + dir + "\x00") }
func messagePrefix(g journal.GUID) []byte { return append([]byte(pMessage), g[:]...) }
func messageKey(g journal.GUID, key string) []byte {
	return append(messagePrefix(g), key...)
}
func tombMessageKey(g journal.GUID, key string) []byte {
	return append(append([]byte(pTombMessage), g[:]...), key...)
}
func tombMailboxKey(g journal.GUID) []byte { return append([]byte(pTombMailbox), g[:]...) }
func orphanKey(g journal.GUID) []byte      { return append([]byte(pOrphans), g[:]...) }

func journalKey(seq uint64) []byte {
	k := make([]byte, len(pJournal)+8)
	copy(k, pJournal)
	binary.BigEndian.PutUint64(k[len(pJournal):], seq)
	return k
}

type mailboxRec struct {
	GUID     journal.GUID `json:"guid"`
	Path     string       `json:"path"`
	Keywords []string     `json:"keywords,omitempty"`
	Messages int64        `json:"messages"`
	Missing  bool         `json:"missing,omitempty"`
}

type messageRec struct {
	Name    string            `json:"name"` // the file name on disk: key plus info
	Sub     journal.Sub       `json:"sub"`
	Flags   []string          `json:"flags"`
	Mtime   int64             `json:"mtime"`
	Size    int64             `json:"size"`
	Content journal.ContentID `json:"content"`
	Missing bool              `json:"missing,omitempty"`
	// Arrived is the tmp/ path the message was renamed from on delivery:
	// after an unclean stop, a delivery rename that did not reach the disk
	// is redone from there.
	Arrived string `json:"arrived,omitempty"`
}

type fileRec struct {
	Mode       uint32            `json:"mode"`
	Mtime      int64             `json:"mtime"`
	Size       int64             `json:"size"`
	Content    journal.ContentID `json:"content"`
	LinkTarget string            `json:"link,omitempty"`
	Missing    bool              `json:"missing,omitempty"`
}

type dirRec struct {
	Mode    uint32 `json:"mode"`
	Missing bool   `json:"missing,omitempty"`
}

type tombstone struct {
	Time   journal.HLC    `json:"time"`
	Origin journal.NodeID `json:"origin"`
	Seq    uint64         `json:"seq"`
}

type counts struct {
	Mailboxes int64 `json:"mailboxes"`
	Messages  int64 `json:"messages"`
}

func encodeRec(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return append([]byte{recVersion}, b...), nil
}

func decodeRec(b []byte, v any) error {
	if len(b) == 0 || b[0] != recVersion {
		return fmt.Errorf("index record: unknown record version (written by a newer mailfs?)")
	}
	return json.Unmarshal(b[1:], v)
}
