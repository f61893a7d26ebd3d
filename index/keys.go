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
	pPeerSync    = "ps/" // + node ID: what this node last did with that peer (node-local) → PeerSync
	pApplied     = "ap/" // + origin node ID → appliedRec: how far that origin's ops are applied
	pSubStamp    = "ss/" // + dir + "\x00" + name → subStampRec: the newest (un)subscribe
	pAlias       = "al/" // + GUID → GUID: a mailbox GUID merged into another (rule 3, 4)
	pEarlyFlags  = "ef/" // + GUID + key → earlyFlagsRec: flag changes that arrived before their message
	pFileReg     = "pv/" // + path → fileRegRec: the versions of a plain file (rule 10)
	pMerging     = "mg/" // + GUID → GUID: a mailbox whose mail the applier is moving into another (rule 3)
	pAbsentAdd   = "aa/" // + GUID + key → absentAddRec: a peer's add that came without its body

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
func fileRegKey(p string) []byte          { return []byte(pFileReg + p) }
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
	// Renamed is the stamp of the op that gave the mailbox its path: the
	// newest rename wins (design §6 rule 2).
	Renamed journal.Stamp `json:"renamed,omitempty"`
	// RenamedSeq is that op's seq: whether a peer's delete had seen it.
	RenamedSeq uint64 `json:"renamed_seq,omitempty"`
	// Created, CreatedSeq and CreatedPath name the op that created the
	// mailbox and where: two mailboxes created at one path by nodes that
	// had not seen each other's create are one mailbox (rule 3), wherever
	// renames have taken them since.
	Created     journal.Stamp `json:"created,omitempty"`
	CreatedSeq  uint64        `json:"created_seq,omitempty"`
	CreatedPath string        `json:"created_path,omitempty"`
	// CreatedGUID is the GUID it was created with (rule 3 may have given
	// it another since).
	CreatedGUID journal.GUID `json:"created_guid,omitempty"`
	// CreatedSeen is what its creator had applied: a create that had seen
	// another mailbox's create at the same path is not the same mailbox
	// (that one had left the path by then).
	CreatedSeen journal.VersionVector `json:"created_seen,omitempty"`
	// MergedCreates are the other creates merged into it (rule 3): a
	// delete whose node had not seen one of them leaves the mailbox to it,
	// as on the nodes where that create arrives after the delete.
	MergedCreates []CreateRef `json:"merged_creates,omitempty"`
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
	// Added is the op that added the message here (a mailbox delete
	// removes only what its deleter had seen, design §6 rule 4).
	Added    journal.Stamp `json:"added,omitempty"`
	AddedSeq uint64        `json:"added_seq,omitempty"`
	// AddedTo is the mailbox GUID that op named (rule 3 or 4 may have
	// given the mailbox another since): a delete that had not seen every
	// create of the mailbox keeps the mail under the GUID its name gets on
	// the deleter's side.
	AddedTo journal.GUID `json:"added_to,omitempty"`
	// FlagStamps holds, per flag name, the op that last set or cleared it:
	// flags merge one by one, newest change wins (design §6 rule 6).
	FlagStamps map[string]journal.Stamp `json:"flag_stamps,omitempty"`
	// Over names the expunge of this key here that the move which put the
	// message here was made over (the move's op.Seen): that expunge,
	// arriving later, removed an earlier copy, not this one.
	Over journal.VersionVector `json:"over,omitempty"`
}

type appliedRec struct {
	Epoch uint64 `json:"epoch"`
	Seq   uint64 `json:"seq"`
	// Applying is the seq of the op of the segment being applied whose
	// effects are committed (wholly or in part) beyond Seq: part of what
	// this node has seen, for the version vector of a local op made
	// meanwhile, though not yet a resume point.
	Applying uint64 `json:"applying,omitempty"`
}

type subStampRec struct {
	Subscribed bool          `json:"subscribed"`
	Stamp      journal.Stamp `json:"stamp"`
}

func appliedKey(origin journal.NodeID) []byte { return append([]byte(pApplied), origin[:]...) }
func subStampKey(dir, name string) []byte     { return []byte(pSubStamp + dir + "\x00" + name) }
func aliasKey(g journal.GUID) []byte          { return append([]byte(pAlias), g[:]...) }
func mergingKey(g journal.GUID) []byte        { return append([]byte(pMerging), g[:]...) }
func absentAddKey(g journal.GUID, key string) []byte {
	return append(append([]byte(pAbsentAdd), g[:]...), key...)
}

// absentAddRec is a peer's add of a message whose body its sender no
// longer had (the message went again there before the op was sent): the
// op that says where it went comes later, and until it does, the add is
// mail a mailbox delete may not have seen (rule 4).
type absentAddRec struct {
	Origin journal.NodeID `json:"origin"`
	Seq    uint64         `json:"seq"`
}

func earlyFlagsKey(g journal.GUID, key string) []byte {
	return append(append([]byte(pEarlyFlags), g[:]...), key...)
}

// FlagChange is one flag set or cleared by an op.
type FlagChange struct {
	Present bool          `json:"present"`
	Stamp   journal.Stamp `json:"stamp"`
}

// earlyFlagsRec holds, per flag, the newest change of a message this node
// does not have yet: with three or more nodes a flag change can overtake
// the add it follows, and must still win over it.
type earlyFlagsRec struct {
	Flags map[string]FlagChange `json:"flags"`
	// Cur: an early op had the message in cur/ (cur/ beats new/).
	Cur bool `json:"cur,omitempty"`
}

type fileRec struct {
	Mode       uint32            `json:"mode"`
	Mtime      int64             `json:"mtime"`
	Size       int64             `json:"size"`
	Content    journal.ContentID `json:"content"`
	LinkTarget string            `json:"link,omitempty"`
	Missing    bool              `json:"missing,omitempty"`
	// Stamp and Seq name the op that wrote this version (its dot, rule 10).
	Stamp journal.Stamp `json:"stamp,omitempty"`
	Seq   uint64        `json:"seq,omitempty"`
}

type dirRec struct {
	Mode    uint32 `json:"mode"`
	Missing bool   `json:"missing,omitempty"`
}

type tombstone struct {
	Time   journal.HLC    `json:"time"`
	Origin journal.NodeID `json:"origin"`
	Seq    uint64         `json:"seq"`
	// Path and Seen, for a mailbox: where it was and what its deleter had
	// applied (mail it had not seen survives the delete, design §6 rule 4).
	Path string                `json:"path,omitempty"`
	Seen journal.VersionVector `json:"seen,omitempty"`
	// Creates and CreatedPath, for a mailbox deleted here: its creates and
	// where they were made, so a create made there concurrently that
	// arrives later is known to be one mailbox with it (rule 3).
	Creates     []CreateRef `json:"creates,omitempty"`
	CreatedPath string      `json:"created_path,omitempty"`
	// MovedTo and MovedKey, for a message moved away: where it went, so a
	// peer's flag change to it there still finds it.
	MovedTo  *journal.GUID `json:"moved_to,omitempty"`
	MovedKey string        `json:"moved_key,omitempty"`
	// MoverSeen, for a message a peer's move took away before it arrived
	// here: that move's Seen, which names the op that had brought the
	// message to its source on the mover (PeerView.MovedAwayKnowing).
	MoverSeen journal.VersionVector `json:"mover_seen,omitempty"`
	// Followed, for a message expunged here: MovedTo is where a concurrent
	// move brought it back (followMove), not where it was moved away to.
	// The key stays expunged here: a later move into this mailbox is an
	// add that meets the expunge (rule 5).
	Followed bool `json:"followed,omitempty"`
	// AddedOrigin and AddedSeq, for a message expunged or moved away: the
	// op that had added it, so a mailbox delete that had not seen the add
	// still knows the mail was there (rule 4; see ExpungedUnseen).
	AddedOrigin journal.NodeID `json:"added_origin,omitempty"`
	AddedSeq    uint64         `json:"added_seq,omitempty"`
	// AddedTo, for a message expunged here: the mailbox GUID that add
	// named (zero in records written before it was kept).
	AddedTo journal.GUID `json:"added_to,omitempty"`
	// ByMailboxDelete, for a message expunged here: a delete of its
	// mailbox removed it, not an expunge of its own. A node that gets the
	// message after a delete that had not seen it gets that delete of the
	// mailbox too, which takes the mailbox made again there for it: the
	// message keeps no empty mailbox for the first delete (rule 4).
	ByMailboxDelete bool `json:"by_mailbox_delete,omitempty"`
	// Sub, Flags and FlagStamps, for a message expunged here: what it was
	// when it went, so a concurrent move of it (which brings it back, in
	// the target) keeps the flag changes made before the expunge.
	Sub        journal.Sub              `json:"sub,omitempty"`
	Flags      []string                 `json:"flags,omitempty"`
	FlagStamps map[string]journal.Stamp `json:"flag_stamps,omitempty"`
	// Renamed, for a mailbox: the stamp of the newest rename its deleter
	// had not seen, which moved Path (the mail kept from it is there).
	Renamed *journal.Stamp `json:"renamed,omitempty"`
	// RenamedSeq is that rename's seq (0 in records written before it was
	// kept).
	RenamedSeq uint64 `json:"renamed_seq,omitempty"`
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
