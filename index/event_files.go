package index

import (
	"fmt"

	"mailfs/journal"
	"mailfs/maildir"
)

func subOf(s string) journal.Sub {
	switch s {
	case "new":
		return journal.SubNew
	case "cur":
		return journal.SubCur
	}
	return journal.SubNone
}

// mailboxFor returns the mailbox holding a message path's new/ or cur/,
// creating it if the directory was never seen as one (its cur/ predates
// mailfs or was made by rename).
func (t *tx) mailboxFor(c maildir.Class) (*mailboxRec, error) {
	mb, err := t.mailboxAt(c.Mailbox)
	if err != nil || mb != nil {
		return mb, err
	}
	return t.createMailbox(c.Mailbox, journal.GUID{}, nil)
}

func (t *tx) renameFile(ev Event) error {
	cf, ct := maildir.Classify(ev.Path, false), maildir.Classify(ev.NewPath, false)
	switch {
	case cf.Kind == maildir.KindMessage && ct.Kind == maildir.KindMessage:
		return t.moveMessage(cf, ct, ev)
	case cf.Kind == maildir.KindPlainFile && ct.Kind == maildir.KindPlainFile:
		return t.writePlain(ev.NewPath, ev, ev.Path, false)
	}
	if err := t.depart(ev.Path); err != nil {
		return err
	}
	return t.arrive(ev.NewPath, ev, "", false)
}

// arrive records that a file now exists at path as ev describes. copyFrom
// names the link source of a hard-link copy.
func (t *tx) arrive(path string, ev Event, copyFrom string, rescan bool) error {
	c := maildir.Classify(path, false)
	switch c.Kind {
	case maildir.KindMessage:
		return t.addMessage(c, ev, copyFrom, rescan)
	case maildir.KindPlainFile:
		return t.writePlain(path, ev, "", rescan)
	case maildir.KindSubscriptions:
		return t.setSubscriptions(c.Dir, ev.Data)
	case maildir.KindKeywords:
		return t.setKeywords(c.Mailbox, ev.Data)
	}
	return nil
}

func (t *tx) content(ev Event, fallback *messageRec) (journal.ContentID, int64, error) {
	if !ev.File.Content.IsZero() {
		return ev.File.Content, ev.File.Size, nil
	}
	if fallback != nil && !fallback.Content.IsZero() {
		return fallback.Content, fallback.Size, nil
	}
	if ev.Content == nil {
		return journal.ContentID{}, ev.File.Size, nil
	}
	id, size, err := ev.Content()
	if err != nil {
		return id, size, fmt.Errorf("content of %s: %w", ev.Path, err)
	}
	return id, size, nil
}

func (t *tx) addMessage(c maildir.Class, ev Event, copyFrom string, rescan bool) error {
	name, err := maildir.ParseName(c.Name)
	if err != nil {
		return err
	}
	mb, err := t.mailboxFor(c)
	if err != nil {
		return err
	}
	rec, err := t.message(mb.GUID, name.Base)
	if err != nil {
		return err
	}
	sub := subOf(c.Sub)
	flags := maildir.FlagNames(name.Letters(), mb.Keywords)
	if rescan && rec != nil {
		if rec.Name == c.Name && rec.Sub == sub {
			if rec.Missing {
				rec.Missing = false
				return t.putRec(messageKey(mb.GUID, name.Base), rec)
			}
			return nil
		}
		return t.setFlags(mb, name.Base, rec, c.Name, sub, flags, rec.Mtime)
	}
	var src *messageRec
	if copyFrom != "" {
		if cs := maildir.Classify(copyFrom, false); cs.Kind == maildir.KindMessage {
			src, err = t.messageAt(cs)
			if err != nil {
				return err
			}
		}
	}
	content, size, err := t.content(ev, src)
	if err != nil {
		return err
	}
	if rec != nil && rec.Name == c.Name && rec.Content == content && !rec.Missing {
		return nil
	}
	if rec == nil {
		mb.Messages++
		t.counts.Messages++
		if err := t.putMailbox(mb); err != nil {
			return err
		}
	}
	if err := t.del(tombMessageKey(mb.GUID, name.Base)); err != nil {
		return err
	}
	nrec := &messageRec{Name: c.Name, Sub: sub, Flags: flags, Mtime: ev.File.Mtime, Size: size, Content: content}
	if ev.Kind == EvRename {
		if cs := maildir.Classify(ev.Path, false); cs.Kind == maildir.KindScratch && cs.Mailbox == c.Mailbox {
			nrec.Arrived = ev.Path
		}
	}
	if err := t.journal(journal.Op{Kind: journal.MessageAdd, Mailbox: mb.GUID, Path: mb.Path, Key: name.Base,
		Sub: sub, Flags: flags, Mtime: nrec.Mtime, Size: size, Content: content}); err != nil {
		return err
	}
	nrec.Added, nrec.AddedSeq, nrec.AddedTo = journal.StampOf(&t.lastOp), t.lastOp.Seq, t.addedTo(mb.GUID)
	if t.remote != nil && t.remote.Kind == journal.MessageMove {
		nrec.Over = t.remote.Seen // a peer's move made here as an add
	}
	if rec != nil {
		nrec.FlagStamps = rec.FlagStamps
	}
	dated := flags
	if t.remote != nil && t.remote.Kind == journal.MessageMove {
		// A peer's move made here as an add (the message never reached
		// this node in its source): only the flags the move changed date
		// from it. The others are as old as the message, and any change
		// made to them since (one that reaches this node only now, through
		// the move) beats them.
		dated = t.remote.Changed
	}
	stampFlags(nrec, dated, nrec.Added)
	if err := t.takeEarlyFlags(mb.GUID, name.Base, nrec); err != nil {
		return err
	}
	return t.putRec(messageKey(mb.GUID, name.Base), nrec)
}

// messageAt returns the record of the message file c names, if that exact
// file is the one the index knows for its key.
func (t *tx) messageAt(c maildir.Class) (*messageRec, error) {
	name, err := maildir.ParseName(c.Name)
	if err != nil {
		return nil, nil
	}
	mb, err := t.mailboxAt(c.Mailbox)
	if err != nil || mb == nil {
		return nil, err
	}
	return t.message(mb.GUID, name.Base)
}

func (t *tx) setFlags(mb *mailboxRec, key string, rec *messageRec, name string, sub journal.Sub, flags []string, mtime int64) error {
	changed := flagDiff(rec.Flags, flags)
	rec.Name, rec.Sub, rec.Flags, rec.Mtime, rec.Missing = name, sub, flags, mtime, false
	if err := t.journal(journal.Op{Kind: journal.MessageFlags, Mailbox: mb.GUID, Path: mb.Path, Key: key,
		Sub: sub, Flags: flags, Changed: changed, Mtime: mtime}); err != nil {
		return err
	}
	stampFlags(rec, changed, journal.StampOf(&t.lastOp))
	return t.putRec(messageKey(mb.GUID, key), rec)
}

// flagDiff lists the flags present in exactly one of a and b, sorted.
func flagDiff(a, b []string) []string {
	in := map[string]int{}
	for _, f := range a {
		in[f] |= 1
	}
	for _, f := range b {
		in[f] |= 2
	}
	out := []string{}
	for f, v := range in {
		if v != 3 {
			out = append(out, f)
		}
	}
	sortStrings(out)
	return out
}

// stampFlags records st as the newest change of each named flag.
func stampFlags(rec *messageRec, names []string, st journal.Stamp) {
	if len(names) == 0 {
		return
	}
	if rec.FlagStamps == nil {
		rec.FlagStamps = map[string]journal.Stamp{}
	}
	for _, f := range names {
		if old, ok := rec.FlagStamps[f]; !ok || old.Less(st) {
			rec.FlagStamps[f] = st
		}
	}
}

// addedTo is the mailbox GUID the op adding a message to mailbox g names:
// the peer op's own (it may name a GUID merged into g), else g.
func (t *tx) addedTo(g journal.GUID) journal.GUID {
	if t.remote != nil {
		switch t.remote.Kind {
		case journal.MessageAdd:
			return t.remote.Mailbox
		case journal.MessageMove:
			return t.remote.Target
		}
	}
	return g
}

func (t *tx) moveMessage(cf, ct maildir.Class, ev Event) error {
	nf, err := maildir.ParseName(cf.Name)
	if err != nil {
		return err
	}
	nt, err := maildir.ParseName(ct.Name)
	if err != nil {
		return err
	}
	mbF, err := t.mailboxAt(cf.Mailbox)
	if err != nil {
		return err
	}
	var recF *messageRec
	if mbF != nil {
		if recF, err = t.message(mbF.GUID, nf.Base); err != nil {
			return err
		}
	}
	if recF == nil {
		// The source was never indexed: the target is simply new.
		return t.arrive(ev.NewPath, ev, "", false)
	}
	mbT := mbF
	if ct.Mailbox != cf.Mailbox {
		if into, ok, err := t.mergingInto(mbF.GUID); err != nil || ok {
			if err != nil {
				return err
			}
			return t.mergeMove(mbF, into, nf.Base, nt, ct, recF)
		}
		if mbT, err = t.mailboxFor(ct); err != nil {
			return err
		}
	}
	sub := subOf(ct.Sub)
	flags := maildir.FlagNames(nt.Letters(), mbT.Keywords)
	if mbT == mbF && nf.Base == nt.Base {
		if recF.Name == ct.Name && recF.Sub == sub && !recF.Missing {
			return nil
		}
		return t.setFlags(mbF, nf.Base, recF, ct.Name, sub, flags, recF.Mtime)
	}
	recT, err := t.message(mbT.GUID, nt.Base)
	if err != nil {
		return err
	}
	replaced := ""
	if recT != nil {
		replaced = nt.Base
		t.counts.Messages--
	} else {
		mbT.Messages++
	}
	mbF.Messages--
	if err := t.del(messageKey(mbF.GUID, nf.Base)); err != nil {
		return err
	}
	if err := t.putMailbox(mbF); err != nil {
		return err
	}
	if mbT != mbF {
		if err := t.putMailbox(mbT); err != nil {
			return err
		}
	}
	// A move back over the trace of an expunge here names it (op.Seen): the
	// move was made knowing the expunge, and beats it on every node (the
	// applier's moveMessage), where a move made without that knowledge
	// meets it (rules 5 and 7).
	var overExpunge journal.VersionVector
	var prevT tombstone
	if ok, err := t.getRec(tombMessageKey(mbT.GUID, nt.Base), &prevT); err != nil {
		return err
	} else if ok && (prevT.MovedTo == nil || prevT.Followed) && prevT.Seq != 0 {
		overExpunge = journal.VersionVector{prevT.Origin: prevT.Seq}
	}
	if err := t.del(tombMessageKey(mbT.GUID, nt.Base)); err != nil {
		return err
	}
	moved := &messageRec{Name: ct.Name, Sub: sub, Flags: flags, Mtime: recF.Mtime, Size: recF.Size, Content: recF.Content,
		FlagStamps: recF.FlagStamps}
	// The move names the op that brought the message to its source too
	// (its add, or a peer's move into it): a node that gets this move
	// before that op knows, when that op comes, that the message has moved
	// on (PeerView.MovedAwayKnowing). An origin's ops are applied in order,
	// so the entry claims no more than this node has seen.
	seen := overExpunge
	if t.remote == nil && recF.AddedSeq != 0 && !recF.Added.Origin.IsZero() {
		seen = journal.VersionVector{recF.Added.Origin: recF.AddedSeq}
		for o, s := range overExpunge {
			seen[o] = max(seen[o], s)
		}
	}
	op := journal.Op{Kind: journal.MessageMove, Mailbox: mbF.GUID, Path: mbF.Path, Target: mbT.GUID,
		NewPath: mbT.Path, Key: nf.Base, Sub: sub, Flags: flags, Mtime: moved.Mtime, Size: moved.Size,
		Content: moved.Content, Replaced: replaced, Seen: seen}
	if nt.Base != nf.Base {
		op.NewKey = nt.Base
	}
	op.Changed = flagDiff(recF.Flags, flags)
	if err := t.journal(op); err != nil {
		return err
	}
	last := t.lastOp
	moved.Added, moved.AddedSeq, moved.AddedTo = journal.StampOf(&last), last.Seq, t.addedTo(mbT.GUID)
	moved.Over = overExpunge
	if t.remote != nil && t.remote.Kind == journal.MessageMove {
		moved.Over = t.remote.Seen
	}
	stampFlags(moved, op.Changed, moved.Added)
	if err := t.takeEarlyFlags(mbT.GUID, nt.Base, moved); err != nil {
		return err
	}
	if err := t.putRec(messageKey(mbT.GUID, nt.Base), moved); err != nil {
		return err
	}
	to := mbT.GUID
	return t.putRec(tombMessageKey(mbF.GUID, nf.Base), &tombstone{Time: last.Time, Origin: last.Origin, Seq: last.Seq,
		MovedTo: &to, MovedKey: nt.Base, AddedOrigin: recF.Added.Origin, AddedSeq: recF.AddedSeq})
}

// depart records that the file at path is gone (unlinked or renamed away).
func (t *tx) depart(path string) error {
	c := maildir.Classify(path, false)
	switch c.Kind {
	case maildir.KindMessage:
		name, err := maildir.ParseName(c.Name)
		if err != nil {
			return nil // never indexed
		}
		mb, err := t.mailboxAt(c.Mailbox)
		if err != nil || mb == nil {
			return err
		}
		rec, err := t.message(mb.GUID, name.Base)
		if err != nil || rec == nil || rec.Name != c.Name {
			return err
		}
		if err := t.del(messageKey(mb.GUID, name.Base)); err != nil {
			return err
		}
		mb.Messages--
		t.counts.Messages--
		if err := t.putMailbox(mb); err != nil {
			return err
		}
		if err := t.journal(journal.Op{Kind: journal.MessageExpunge, Mailbox: mb.GUID, Path: mb.Path, Key: name.Base}); err != nil {
			return err
		}
		last := t.lastOp
		trace := expungeTrace(last.Time, last.Origin, last.Seq, rec)
		trace.ByMailboxDelete = t.remote != nil && t.remote.Kind == journal.MailboxDelete
		return t.putRec(tombMessageKey(mb.GUID, name.Base), trace)
	case maildir.KindPlainFile:
		var old fileRec
		ok, err := t.getRec(fileKey(path), &old)
		if err != nil || !ok {
			return err
		}
		if err := t.del(fileKey(path)); err != nil {
			return err
		}
		if t.remote != nil {
			return t.journal(journal.Op{Kind: journal.FileDelete, Path: path})
		}
		replaced, err := t.shownDots(path, &old)
		if err != nil {
			return err
		}
		if err := t.journal(journal.Op{Kind: journal.FileDelete, Path: path, Seen: replaced}); err != nil {
			return err
		}
		return t.recordFileOp(&t.lastOp)
	case maildir.KindSubscriptions:
		return t.setSubscriptions(c.Dir, nil)
	case maildir.KindKeywords:
		return t.setKeywords(c.Mailbox, nil)
	}
	return nil
}

func (t *tx) writePlain(path string, ev Event, from string, rescan bool) error {
	var old fileRec
	had, err := t.getRec(fileKey(path), &old)
	if err != nil {
		return err
	}
	if rescan && had && old.Size == ev.File.Size && old.Mtime == ev.File.Mtime && old.Mode == ev.File.Mode {
		if old.Missing {
			old.Missing = false
			return t.putRec(fileKey(path), &old)
		}
		return nil
	}
	rec := fileRec{Mode: ev.File.Mode, Mtime: ev.File.Mtime, Size: ev.File.Size, Content: ev.File.Content, LinkTarget: ev.File.LinkTarget}
	if rec.LinkTarget == "" && rec.Content.IsZero() && ev.Content != nil {
		if rec.Content, rec.Size, err = ev.Content(); err != nil {
			return fmt.Errorf("content of %s: %w", path, err)
		}
	}
	if from != "" {
		if err := t.del(fileKey(from)); err != nil {
			return err
		}
	}
	if from == "" && had && !old.Missing && old.Content == rec.Content && old.LinkTarget == rec.LinkTarget && old.Mode == rec.Mode {
		return nil
	}
	op := journal.Op{Kind: journal.FileWrite, Path: path, From: from, Mode: rec.Mode,
		Mtime: rec.Mtime, Size: rec.Size, Content: rec.Content, LinkTarget: rec.LinkTarget}
	if t.remote == nil {
		// The version this write replaces (rule 10): what was at path.
		var shown *fileRec
		if had {
			shown = &old
		}
		replaced, err := t.shownDots(path, shown)
		if err != nil {
			return err
		}
		op.Seen = replaced
	}
	if err := t.journal(op); err != nil {
		return err
	}
	rec.Stamp, rec.Seq = journal.StampOf(&t.lastOp), t.lastOp.Seq
	if err := t.putRec(fileKey(path), &rec); err != nil {
		return err
	}
	if t.remote != nil {
		return nil // the applier records the peer op's versions when it is done
	}
	return t.recordFileOp(&t.lastOp)
}

func (t *tx) touch(path string, mtime int64) error {
	c := maildir.Classify(path, false)
	if c.Kind != maildir.KindMessage {
		return nil
	}
	name, err := maildir.ParseName(c.Name)
	if err != nil {
		return nil
	}
	mb, err := t.mailboxAt(c.Mailbox)
	if err != nil || mb == nil {
		return err
	}
	rec, err := t.message(mb.GUID, name.Base)
	if err != nil || rec == nil || rec.Name != c.Name || rec.Mtime == mtime {
		return err
	}
	return t.setFlags(mb, name.Base, rec, rec.Name, rec.Sub, rec.Flags, mtime)
}

func (t *tx) missing(path string, isDir bool) error {
	if isDir {
		mb, err := t.mailboxAt(path)
		if err != nil {
			return err
		}
		if mb != nil && !mb.Missing {
			mb.Missing = true
			return t.putMailbox(mb)
		}
		var d dirRec
		if ok, err := t.getRec(dirKey(path), &d); err != nil || !ok || d.Missing {
			return err
		}
		d.Missing = true
		return t.putRec(dirKey(path), &d)
	}
	c := maildir.Classify(path, false)
	switch c.Kind {
	case maildir.KindMessage:
		rec, err := t.messageAt(c)
		if err != nil || rec == nil || rec.Name != c.Name || rec.Missing {
			return err
		}
		name, _ := maildir.ParseName(c.Name)
		mb, err := t.mailboxAt(c.Mailbox)
		if err != nil {
			return err
		}
		rec.Missing = true
		return t.putRec(messageKey(mb.GUID, name.Base), rec)
	case maildir.KindPlainFile:
		var f fileRec
		if ok, err := t.getRec(fileKey(path), &f); err != nil || !ok || f.Missing {
			return err
		}
		f.Missing = true
		return t.putRec(fileKey(path), &f)
	}
	return nil
}

// setSubscriptions diffs the names a subscriptions file now lists against
// the index and journals one op per name that changed.
func (t *tx) setSubscriptions(dir string, data []byte) error {
	want := maildir.ParseSubscriptions(data)
	have := map[string]bool{}
	prefix := subPrefix(dir)
	if err := t.scanKeys(prefix, func(k []byte) error {
		have[string(k[len(prefix):])] = true
		return nil
	}); err != nil {
		return err
	}
	for _, name := range want {
		if have[name] {
			delete(have, name)
			continue
		}
		if err := t.set(subKey(dir, name), nil); err != nil {
			return err
		}
		if err := t.journal(journal.Op{Kind: journal.Subscribe, Path: dir, Name: name}); err != nil {
			return err
		}
		if err := t.stampSubscription(dir, name, true, journal.StampOf(&t.lastOp)); err != nil {
			return err
		}
	}
	gone := make([]string, 0, len(have))
	for name := range have {
		gone = append(gone, name)
	}
	sortStrings(gone)
	for _, name := range gone {
		if err := t.del(subKey(dir, name)); err != nil {
			return err
		}
		if err := t.journal(journal.Op{Kind: journal.Unsubscribe, Path: dir, Name: name}); err != nil {
			return err
		}
		if err := t.stampSubscription(dir, name, false, journal.StampOf(&t.lastOp)); err != nil {
			return err
		}
	}
	return nil
}

func (t *tx) setKeywords(mailboxPath string, data []byte) error {
	mb, err := t.mailboxAt(mailboxPath)
	if err != nil || mb == nil {
		return err
	}
	old := maildir.Keywords(mb.Keywords)
	mb.Keywords = maildir.ParseKeywords(data)
	if err := t.putMailbox(mb); err != nil {
		return err
	}
	// Dovecot renames a message to a new keyword letter before it writes
	// dovecot-keywords: messages journaled with that letter untranslated
	// get their flags journaled again, by name.
	var newly []string
	for i, name := range mb.Keywords {
		if name != "" && (i >= len(old) || old[i] != name) {
			newly = append(newly, maildir.UnknownLetterPrefix+string(rune('a'+i)))
		}
	}
	if len(newly) == 0 {
		return nil
	}
	return t.scanKeys(messagePrefix(mb.GUID), func(k []byte) error {
		var rec messageRec
		if ok, err := t.getRec(k, &rec); err != nil || !ok {
			return err
		}
		if !hasAny(rec.Flags, newly) {
			return nil
		}
		name, err := maildir.ParseName(rec.Name)
		if err != nil {
			return nil
		}
		key := string(k[len(messagePrefix(mb.GUID)):])
		return t.setFlags(mb, key, &rec, rec.Name, rec.Sub, maildir.FlagNames(name.Letters(), mb.Keywords), rec.Mtime)
	})
}

func hasAny(flags, any []string) bool {
	for _, f := range flags {
		for _, a := range any {
			if f == a {
				return true
			}
		}
	}
	return false
}
