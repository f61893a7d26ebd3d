package journal

import (
	"encoding/hex"
	"fmt"
	"sort"
	"strings"
	"time"
)

// Kind says what an op changes.
type Kind uint8

// Op kinds (design §5). Numbers are part of the wire format: append only.
const (
	KindInvalid    Kind = 0
	MailboxCreate  Kind = 1
	MailboxRename  Kind = 2
	MailboxDelete  Kind = 3
	DirCreate      Kind = 4
	DirDelete      Kind = 5
	Subscribe      Kind = 6
	Unsubscribe    Kind = 7
	MessageAdd     Kind = 8
	MessageFlags   Kind = 9
	MessageMove    Kind = 10
	MessageExpunge Kind = 11
	FileWrite      Kind = 12
	FileDelete     Kind = 13
	kindEnd        Kind = 14
)

var kindNames = [...]string{
	KindInvalid:    "Invalid",
	MailboxCreate:  "MailboxCreate",
	MailboxRename:  "MailboxRename",
	MailboxDelete:  "MailboxDelete",
	DirCreate:      "DirCreate",
	DirDelete:      "DirDelete",
	Subscribe:      "Subscribe",
	Unsubscribe:    "Unsubscribe",
	MessageAdd:     "MessageAdd",
	MessageFlags:   "MessageFlags",
	MessageMove:    "MessageMove",
	MessageExpunge: "MessageExpunge",
	FileWrite:      "FileWrite",
	FileDelete:     "FileDelete",
}

func (k Kind) String() string {
	if k < kindEnd {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Valid reports whether k is a known op kind.
func (k Kind) Valid() bool { return k > KindInvalid && k < kindEnd }

// Sub is the Maildir subdirectory a message lives in.
type Sub uint8

// Sub values. Numbers are part of the wire format.
const (
	SubNone Sub = 0
	SubNew  Sub = 1
	SubCur  Sub = 2
)

func (s Sub) String() string {
	switch s {
	case SubNew:
		return "new"
	case SubCur:
		return "cur"
	}
	return ""
}

// GUID is a 128-bit mailbox identifier.
type GUID [16]byte

func (g GUID) String() string { return hex.EncodeToString(g[:]) }

// IsZero reports whether g is unset.
func (g GUID) IsZero() bool { return g == GUID{} }

// ContentID is the SHA-256 of a message's or file's bytes.
type ContentID [32]byte

func (c ContentID) String() string { return hex.EncodeToString(c[:]) }

// IsZero reports whether c is unset.
func (c ContentID) IsZero() bool { return c == ContentID{} }

// NodeID identifies a mailfs node: the SHA-256 fingerprint of its public key.
type NodeID [32]byte

func (n NodeID) String() string { return hex.EncodeToString(n[:]) }

// Short is the first 8 hex digits, for logs and conflict names.
func (n NodeID) Short() string { return hex.EncodeToString(n[:4]) }

// IsZero reports whether n is unset.
func (n NodeID) IsZero() bool { return n == NodeID{} }

// VersionVector maps an origin to the highest seq of it that was applied.
type VersionVector map[NodeID]uint64

// Op is one mail-level change, as journaled and replicated.
//
// Field use by kind:
//   - MailboxCreate: Mailbox, Path.
//   - MailboxRename: Mailbox, Path (old), NewPath.
//   - MailboxDelete: Mailbox, Path, Seen (what the deleter had applied).
//   - DirCreate, DirDelete: Path, Mode.
//   - Subscribe, Unsubscribe: Path (the directory holding the subscriptions
//     file), Name (the mailbox name as the file lists it).
//   - MessageAdd: Mailbox, Path (mailbox path), Key, Sub, Flags, Mtime, Size,
//     Content, Replaced (a key this add overwrote, if any).
//   - MessageFlags: Mailbox, Path, Key, Sub, Flags, Mtime.
//   - MessageMove: Mailbox/Path (source), Target/NewPath (destination), Key,
//     NewKey (when the unique part changed too), Sub, Flags, Mtime, Size,
//     Content, Replaced, Seen (the expunge of the key in the destination it
//     was made over, by origin and seq, if any: a move made knowing an
//     expunge there beats it).
//   - MessageExpunge: Mailbox, Path, Key.
//   - FileWrite: Path, From (the source of a rename, if the write was one),
//     Mode, Mtime, Size, Content, LinkTarget for symlinks, Seen (the
//     versions of Path it replaced, by origin and seq: the one its writer
//     had there and others with the same bytes; none when the path had none).
//   - FileDelete: Path, Seen (as for FileWrite).
type Op struct {
	Kind       Kind
	Origin     NodeID
	Seq        uint64
	Time       HLC
	Mailbox    GUID
	Target     GUID
	Path       string
	NewPath    string
	From       string
	Key        string
	NewKey     string
	Replaced   string
	Name       string
	LinkTarget string
	Sub        Sub
	Flags      []string
	// Changed names the flags whose presence this op changed (MessageFlags):
	// flags merge one by one, newest change wins (design §6 rule 6), so a
	// peer must know which flags an op asserts and which it merely carries.
	Changed []string
	Mode    uint32
	Mtime   int64 // nanoseconds since the Unix epoch
	Size    int64
	Content ContentID
	Seen    VersionVector
}

// String renders the op on one line for logs and `mailfs journal`.
func (op *Op) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d %s", op.Seq, op.Kind)
	add := func(k, v string) {
		if v != "" {
			fmt.Fprintf(&b, " %s=%q", k, v)
		}
	}
	if !op.Mailbox.IsZero() {
		add("mailbox", op.Mailbox.String())
	}
	add("path", op.Path)
	if !op.Target.IsZero() {
		add("target", op.Target.String())
	}
	add("new_path", op.NewPath)
	add("from", op.From)
	add("key", op.Key)
	add("new_key", op.NewKey)
	add("replaced", op.Replaced)
	add("name", op.Name)
	add("link", op.LinkTarget)
	add("sub", op.Sub.String())
	if op.Flags != nil {
		fmt.Fprintf(&b, " flags=%q", op.Flags)
	}
	if op.Changed != nil {
		fmt.Fprintf(&b, " changed=%q", op.Changed)
	}
	if op.Mtime != 0 {
		add("mtime", time.Unix(0, op.Mtime).UTC().Format(time.RFC3339Nano))
	}
	if op.Size != 0 {
		fmt.Fprintf(&b, " size=%d", op.Size)
	}
	if !op.Content.IsZero() {
		add("content", op.Content.String()[:16])
	}
	return b.String()
}

// SortFlags puts flag names in their canonical order (byte order) and drops
// duplicates, so equal flag sets encode to equal bytes.
func SortFlags(flags []string) []string {
	if len(flags) == 0 {
		return []string{}
	}
	out := append([]string(nil), flags...)
	sort.Strings(out)
	w := 1
	for i := 1; i < len(out); i++ {
		if out[i] != out[w-1] {
			out[w] = out[i]
			w++
		}
	}
	return out[:w]
}

// MarshalText renders n in hex (JSON map keys and fields of index records).
func (n NodeID) MarshalText() ([]byte, error) { return []byte(n.String()), nil }

// UnmarshalText parses the hex form of MarshalText.
func (n *NodeID) UnmarshalText(b []byte) error {
	if len(b) != 64 {
		return fmt.Errorf("journal: node ID %q is not 64 hex digits", b)
	}
	_, err := hex.Decode(n[:], b)
	return err
}
