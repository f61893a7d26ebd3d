package maildir

import (
	"path"
	"strings"
)

// Kind is what a path of the mounted tree is, for replication (design §3).
type Kind uint8

// Path kinds.
const (
	KindRoot          Kind = iota // the top of the tree
	KindPlainDir                  // a directory that is not (yet) a mailbox, or a mailbox directory itself
	KindPlainFile                 // maildirfolder, dovecot-shared, sieve scripts, anything else: whole-file LWW
	KindMailboxSubdir             // <mailbox>/cur, <mailbox>/new or <mailbox>/tmp
	KindMessage                   // a file directly in <mailbox>/new or <mailbox>/cur
	KindScratch                   // anything below <mailbox>/tmp: never replicated
	KindCache                     // Dovecot indexes, caches, logs and locks: never replicated
	KindUidlist                   // dovecot-uidlist: local (UIDs are per node for now)
	KindKeywords                  // dovecot-keywords: read to translate letters, never replicated as a file
	KindSubscriptions             // subscriptions: replicated as per-name ops
	KindTrash                     // Dovecot's DOVECOT-TRASHED staging dir for mailbox deletes, and all below it
)

var kindNames = [...]string{
	KindRoot: "root", KindPlainDir: "dir", KindPlainFile: "file", KindMailboxSubdir: "mailbox-subdir",
	KindMessage: "message", KindScratch: "scratch", KindCache: "cache", KindUidlist: "uidlist",
	KindKeywords: "keywords", KindSubscriptions: "subscriptions", KindTrash: "trash",
}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "unknown"
}

// Replicated reports whether changes to paths of this kind become ops.
func (k Kind) Replicated() bool {
	switch k {
	case KindPlainDir, KindPlainFile, KindMailboxSubdir, KindMessage, KindSubscriptions:
		return true
	}
	return false
}

// Class is the classification of one path.
type Class struct {
	Kind Kind
	// Mailbox is the mailbox directory (relative to the root) for messages,
	// mailbox subdirectories, scratch files, uidlist and keywords files.
	Mailbox string
	// Sub is "cur", "new" or "tmp" where it applies.
	Sub string
	// Dir is the parent directory of the path ("" at the top).
	Dir string
	// Name is the last path component.
	Name string
}

// TrashName is the directory Dovecot renames a mailbox to before removing
// it recursively; mailfs treats a rename into it as the mailbox's delete.
const TrashName = "DOVECOT-TRASHED"

// Classify says what rel is. rel is slash-separated and relative to the
// root of the mounted tree ("" is the root); isDir tells whether it names a
// directory. It is a pure function of its arguments.
func Classify(rel string, isDir bool) Class {
	rel = strings.Trim(rel, "/")
	if rel == "" || rel == "." {
		return Class{Kind: KindRoot}
	}
	dir, name := path.Split(rel)
	dir = strings.TrimSuffix(dir, "/")
	c := Class{Dir: dir, Name: name}
	comps := strings.Split(rel, "/")
	for _, comp := range comps {
		if strings.Contains(comp, TrashName) {
			c.Kind = KindTrash
			return c
		}
	}
	// Find the innermost tmp/new/cur component that is not the last one for
	// a file; it decides scratch or message.
	for i := len(comps) - 2; i >= 0; i-- {
		switch comps[i] {
		case "tmp":
			c.Kind = KindScratch
			c.Mailbox = strings.Join(comps[:i], "/")
			c.Sub = "tmp"
			return c
		case "new", "cur":
			if i == len(comps)-2 && !isDir && !isCacheName(name) {
				c.Kind = KindMessage
				c.Mailbox = strings.Join(comps[:i], "/")
				c.Sub = comps[i]
				return c
			}
		}
	}
	if isDir && (name == "cur" || name == "new" || name == "tmp") {
		c.Kind = KindMailboxSubdir
		c.Mailbox = dir
		c.Sub = name
		return c
	}
	if isDir {
		c.Kind = KindPlainDir
		return c
	}
	switch {
	case name == "dovecot-uidlist":
		c.Kind = KindUidlist
		c.Mailbox = dir
	case name == "dovecot-keywords":
		c.Kind = KindKeywords
		c.Mailbox = dir
	case name == "subscriptions":
		c.Kind = KindSubscriptions
	case isCacheName(name):
		c.Kind = KindCache
	default:
		c.Kind = KindPlainFile
	}
	return c
}

// isCacheName matches Dovecot's local indexes, caches, logs, locks and
// temporary files (design §3): they are rebuilt per node and never
// replicated.
func isCacheName(name string) bool {
	switch {
	case strings.HasPrefix(name, "dovecot.index"),
		strings.HasPrefix(name, "dovecot.list.index"),
		strings.HasPrefix(name, "dovecot.map.index"),
		strings.HasPrefix(name, "dovecot-uidvalidity"),
		strings.HasPrefix(name, "dovecot.mailbox.log"),
		// Per node by nature: LDA/LMTP's duplicate-delivery database and
		// Sieve's log. Replicated as plain files they would make conflict
		// copies whenever both nodes deliver.
		strings.HasPrefix(name, ".dovecot.lda-dupes"),
		strings.HasPrefix(name, ".dovecot.sieve.log"),
		strings.HasPrefix(name, ".temp."),
		strings.HasPrefix(name, "mailboxes.lock"),
		strings.HasPrefix(name, ".mailfs-"),
		strings.HasSuffix(name, ".lock"),
		strings.HasSuffix(name, ".tmp") && strings.HasPrefix(name, "dovecot"):
		return true
	}
	return false
}
