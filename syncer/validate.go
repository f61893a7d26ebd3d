package syncer

import (
	"errors"
	"fmt"
	"path"
	"strings"
	"unicode/utf8"

	"mailfs/journal"
	"mailfs/maildir"
)

// ErrBadOp marks a peer op that must not be applied: a path outside the
// store or of the wrong kind, a malformed message name, an impossible
// field. One bad op refuses its whole segment.
var ErrBadOp = errors.New("invalid op from peer")

// maxFlagLen bounds one flag name (IMAP keywords are atoms; Dovecot's own
// limit is far below this).
const maxFlagLen = 256

func badOp(op *journal.Op, format string, a ...any) error {
	return fmt.Errorf("%w: op %d %s: %s", ErrBadOp, op.Seq, op.Kind, fmt.Sprintf(format, a...))
}

// cleanRel reports whether p is a clean relative path inside the store:
// no leading slash, no "." or ".." component, no empty component, no NUL,
// valid UTF-8 is not required (Maildir names are bytes) but the length is
// bounded. "" (the store's root) is allowed where allowRoot.
func cleanRel(p string, allowRoot bool) bool {
	if p == "" {
		return allowRoot
	}
	if len(p) > journal.MaxStringLen || strings.ContainsRune(p, 0) || strings.HasPrefix(p, "/") {
		return false
	}
	if path.Clean(p) != p {
		return false
	}
	for _, c := range strings.Split(p, "/") {
		if c == "" || c == "." || c == ".." || len(c) > 255 {
			return false
		}
	}
	return true
}

// validMailboxPath: a clean path whose cur/ classifies as a mailbox's.
func validMailboxPath(p string) bool {
	if !cleanRel(p, true) {
		return false
	}
	cur := "cur"
	if p != "" {
		cur = p + "/cur"
	}
	c := maildir.Classify(cur, true)
	return c.Kind == maildir.KindMailboxSubdir && c.Mailbox == p
}

// validKey: a message key is the unique part of a Maildir name, nothing
// more.
func validKey(k string) bool {
	if len(k) > 255-len(":2,")-52 {
		return false
	}
	n, err := maildir.ParseName(k)
	return err == nil && !n.HasInfo && n.Base == k
}

func validFlags(flags []string) bool {
	for _, f := range flags {
		if f == "" || len(f) > maxFlagLen || !utf8.ValidString(f) {
			return false
		}
		for _, r := range f {
			if r <= ' ' || r == 0x7f {
				return false
			}
		}
	}
	return true
}

// validateOp checks everything about op that does not depend on local
// state. Paths are checked against the classifier, so an op can only ever
// touch what its kind names.
func validateOp(op *journal.Op, limits journal.Limits) error {
	if op.Size < 0 || op.Size > limits.MaxBodySize {
		return badOp(op, "size %d out of range", op.Size)
	}
	if !validFlags(op.Flags) || !validFlags(op.Changed) {
		return badOp(op, "invalid flag name")
	}
	switch op.Kind {
	case journal.MailboxCreate, journal.MailboxDelete:
		if !validMailboxPath(op.Path) || op.Mailbox.IsZero() {
			return badOp(op, "mailbox path %q or GUID invalid", op.Path)
		}
	case journal.MailboxRename:
		if !validMailboxPath(op.Path) || !validMailboxPath(op.NewPath) || op.Mailbox.IsZero() {
			return badOp(op, "mailbox rename %q -> %q invalid", op.Path, op.NewPath)
		}
	case journal.DirCreate, journal.DirDelete:
		if !cleanRel(op.Path, false) || maildir.Classify(op.Path, true).Kind != maildir.KindPlainDir {
			return badOp(op, "directory path %q invalid", op.Path)
		}
		if op.From != "" && (!cleanRel(op.From, false) || maildir.Classify(op.From, true).Kind != maildir.KindPlainDir) {
			return badOp(op, "directory rename source %q invalid", op.From)
		}
	case journal.Subscribe, journal.Unsubscribe:
		if !cleanRel(op.Path, true) || op.Name == "" || strings.ContainsAny(op.Name, "\n\r\x00") || len(op.Name) > 1024 {
			return badOp(op, "subscription %q in %q invalid", op.Name, op.Path)
		}
		if op.Path != "" && maildir.Classify(op.Path, true).Kind != maildir.KindPlainDir {
			return badOp(op, "subscriptions directory %q invalid", op.Path)
		}
	case journal.MessageAdd, journal.MessageFlags, journal.MessageExpunge:
		if !validMailboxPath(op.Path) || op.Mailbox.IsZero() || !validKey(op.Key) {
			return badOp(op, "message %q in mailbox %q invalid", op.Key, op.Path)
		}
		if op.Kind != journal.MessageExpunge && op.Sub != journal.SubNew && op.Sub != journal.SubCur {
			return badOp(op, "message subdirectory %d invalid", op.Sub)
		}
		if op.Kind == journal.MessageAdd && op.Content.IsZero() {
			return badOp(op, "message add without a content ID")
		}
	case journal.MessageMove:
		if !validMailboxPath(op.Path) || !validMailboxPath(op.NewPath) || op.Mailbox.IsZero() || op.Target.IsZero() ||
			!validKey(op.Key) || (op.NewKey != "" && !validKey(op.NewKey)) || (op.Replaced != "" && !validKey(op.Replaced)) {
			return badOp(op, "message move %q (%q -> %q) invalid", op.Key, op.Path, op.NewPath)
		}
		if op.Sub != journal.SubNew && op.Sub != journal.SubCur {
			return badOp(op, "message subdirectory %d invalid", op.Sub)
		}
		// A move's Seen names at most the expunge it was made over and the
		// op that had brought the message to its source.
		if len(op.Seen) > 2 {
			return badOp(op, "message move names %d ops it was made after, more than 2", len(op.Seen))
		}
	case journal.FileWrite, journal.FileDelete:
		// A path this version keeps per node (KindCache) is accepted and
		// ignored: a journal written before it was classified so must
		// still replicate.
		if k := maildir.Classify(op.Path, false).Kind; !cleanRel(op.Path, false) || (k != maildir.KindPlainFile && k != maildir.KindCache) {
			return badOp(op, "file path %q invalid", op.Path)
		}
		if k := maildir.Classify(op.From, false).Kind; op.From != "" && (!cleanRel(op.From, false) || (k != maildir.KindPlainFile && k != maildir.KindCache)) {
			return badOp(op, "file rename source %q invalid", op.From)
		}
		if len(op.Seen) > maxReplacedVersions {
			return badOp(op, "file op replaces %d versions, more than %d", len(op.Seen), maxReplacedVersions)
		}
		if op.LinkTarget != "" {
			t := op.LinkTarget
			if strings.HasPrefix(t, "/") || t == ".." || strings.HasPrefix(t, "../") || strings.Contains(t, "/../") ||
				strings.HasSuffix(t, "/..") || strings.ContainsRune(t, 0) {
				return badOp(op, "symlink target %q leaves its directory", t)
			}
		}
	default:
		return badOp(op, "unknown kind")
	}
	return nil
}

// maxReplacedVersions bounds the versions one plain-file op replaces (one
// per origin that wrote the same bytes concurrently): far more nodes than
// any pairing has.
const maxReplacedVersions = 256
