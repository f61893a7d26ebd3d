package maildir

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestClassify(t *testing.T) {
	const mb = "example.com/alice/Maildir"
	cases := []struct {
		rel  string
		dir  bool
		kind Kind
		mbox string
		sub  string
	}{
		{"", true, KindRoot, "", ""},
		{"example.com", true, KindPlainDir, "", ""},
		{mb, true, KindPlainDir, "", ""},
		{mb + "/cur", true, KindMailboxSubdir, mb, "cur"},
		{mb + "/new", true, KindMailboxSubdir, mb, "new"},
		{mb + "/tmp", true, KindMailboxSubdir, mb, "tmp"},
		{mb + "/cur/1700.M1P2.host,S=10:2,FS", false, KindMessage, mb, "cur"},
		{mb + "/new/1700.M1P2.host", false, KindMessage, mb, "new"},
		{mb + "/tmp/1700.M1P2.host", false, KindScratch, mb, "tmp"},
		{mb + "/tmp/sub/dir", true, KindScratch, mb, "tmp"},
		{mb + "/.Sent/cur/x:2,S", false, KindMessage, mb + "/.Sent", "cur"},
		{mb + "/.Sent", true, KindPlainDir, "", ""},
		{mb + "/.Sent/maildirfolder", false, KindPlainFile, "", ""},
		{mb + "/dovecot-uidlist", false, KindUidlist, mb, ""},
		{mb + "/dovecot-uidlist.lock", false, KindCache, "", ""},
		{mb + "/dovecot-keywords", false, KindKeywords, mb, ""},
		{mb + "/dovecot-keywords.lock", false, KindCache, "", ""},
		{mb + "/subscriptions", false, KindSubscriptions, "", ""},
		{mb + "/subscriptions.lock", false, KindCache, "", ""},
		{mb + "/dovecot.index", false, KindCache, "", ""},
		{"example.com/alice/.dovecot.lda-dupes", false, KindCache, "", ""},
		{"example.com/alice/.dovecot.lda-dupes.lock", false, KindCache, "", ""},
		{"example.com/alice/.dovecot.sieve.log", false, KindCache, "", ""},
		{"example.com/alice/.dovecot.sieve.log.0", false, KindCache, "", ""},
		{mb + "/dovecot.index.log.2", false, KindCache, "", ""},
		{mb + "/dovecot.index.cache", false, KindCache, "", ""},
		{mb + "/dovecot.list.index.log", false, KindCache, "", ""},
		{mb + "/dovecot-uidvalidity.65f0a1b2", false, KindCache, "", ""},
		{mb + "/dovecot-uidvalidity", false, KindCache, "", ""},
		{mb + "/dovecot.mailbox.log", false, KindCache, "", ""},
		{mb + "/.dovecot-sync.lock", false, KindCache, "", ""},
		{mb + "/.temp.host.1234.abcdef", false, KindCache, "", ""},
		{mb + "/cur/dovecot.index", false, KindCache, "", ""},
		{mb + "/cur/subdir", true, KindPlainDir, "", ""},
		{mb + "/cur/subdir/file", false, KindPlainFile, "", ""},
		{mb + "/.DOVECOT-TRASHED", true, KindTrash, "", ""},
		{mb + "/.DOVECOT-TRASHED/cur/x", false, KindTrash, "", ""},
		{mb + "/sieve/main.sieve", false, KindPlainFile, "", ""},
		{"cur/x:2,S", false, KindMessage, "", "cur"},
	}
	for _, c := range cases {
		got := Classify(c.rel, c.dir)
		if got.Kind != c.kind || got.Mailbox != c.mbox || got.Sub != c.sub {
			t.Errorf("Classify(%q, %v) = %v mailbox=%q sub=%q; want %v mailbox=%q sub=%q",
				c.rel, c.dir, got.Kind, got.Mailbox, got.Sub, c.kind, c.mbox, c.sub)
		}
	}
}

func TestParseName(t *testing.T) {
	good := map[string]Name{
		"1700.M1P2.host":              {Base: "1700.M1P2.host"},
		"1700.M1P2.host,S=10:2,FS":    {Base: "1700.M1P2.host,S=10", Info: "2,FS", HasInfo: true},
		"1700.M1P2.host:2,":           {Base: "1700.M1P2.host", Info: "2,", HasInfo: true},
		"1700.M1P2.host:2,Sab":        {Base: "1700.M1P2.host", Info: "2,Sab", HasInfo: true},
		"1700.M1P2.host:1,experiment": {Base: "1700.M1P2.host", Info: "1,experiment", HasInfo: true},
	}
	for in, want := range good {
		got, err := ParseName(in)
		if err != nil || got != want {
			t.Errorf("ParseName(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", ".", "..", ".hidden", ":2,S", "x:3,abc", "x:2,S!", "x:2,S1", "a/b", "x\x00y", "x:"} {
		if _, err := ParseName(bad); !errors.Is(err, ErrMalformedName) {
			t.Errorf("ParseName(%q) = %v; want ErrMalformedName", bad, err)
		}
	}
}

func TestFlags(t *testing.T) {
	kw := ParseKeywords([]byte("0 $Important\n1 work\nbogus\n30 toolate\n3 $Label1\n"))
	if want := (Keywords{"$Important", "work", "", "$Label1"}); !reflect.DeepEqual(kw, want) {
		t.Fatalf("ParseKeywords = %q, want %q", kw, want)
	}
	got := FlagNames("DFPRSTabcd", kw)
	want := []string{"$Forwarded", "$Important", "$Label1", `\Answered`, `\Deleted`, `\Draft`, `\Flagged`, `\Seen`, UnknownLetterPrefix + "c", "work"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("FlagNames = %q\nwant %q", got, want)
	}
	letters, missing := FlagLetters(append(got, "newkw"), kw)
	if letters != "DFPRSTabcd" || !reflect.DeepEqual(missing, []string{"newkw"}) {
		t.Fatalf("FlagLetters = %q %q", letters, missing)
	}
	if string(FormatKeywords(kw)) != "0 $Important\n1 work\n3 $Label1\n" {
		t.Fatalf("FormatKeywords = %q", FormatKeywords(kw))
	}
}

func TestSubscriptionsAndUidlist(t *testing.T) {
	subs := ParseSubscriptions([]byte("V\t2\n\nINBOX\nSent\nArchive\t2024\nSent\n"))
	if want := []string{"INBOX", "Sent", "Archive\t2024"}; !reflect.DeepEqual(subs, want) {
		t.Fatalf("ParseSubscriptions = %q", subs)
	}
	g, ok := UidlistGUID([]byte("3 V1700000000 N5 G0123456789abcdef0123456789abcdef\n1 :1700.M1P2.host\n"))
	if !ok || g != [16]byte{0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef} {
		t.Fatalf("UidlistGUID = %x %v", g, ok)
	}
	for _, bad := range []string{"", "1 2 3\n", "3 V1 N1 Gnothex\n", "3 V1 N1 G00\n", "3 V1 N1\n"} {
		if _, ok := UidlistGUID([]byte(bad)); ok {
			t.Errorf("UidlistGUID(%q) accepted", bad)
		}
	}
}

// FuzzParseName: never panics; an accepted name has a non-empty base with
// no ':' or '/', and base plus info rebuilds the name. Seeds:
// testdata/fuzz/FuzzParseName.
func FuzzParseName(f *testing.F) {
	for _, s := range []string{"1700.M1P2.host,S=10:2,FS", "x:2,", ".x", "x:1,a", "x:3,", "a:2,ab"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseName(s)
		if err != nil {
			return
		}
		if n.Base == "" || strings.ContainsAny(n.Base, ":/") {
			t.Fatalf("ParseName(%q) base %q", s, n.Base)
		}
		rebuilt := n.Base
		if n.HasInfo {
			rebuilt += ":" + n.Info
		}
		if rebuilt != s {
			t.Fatalf("ParseName(%q) rebuilds as %q", s, rebuilt)
		}
		FlagNames(n.Letters(), nil)
		Classify("a/cur/"+s, false)
	})
}
