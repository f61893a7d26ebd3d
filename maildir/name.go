package maildir

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// ErrMalformedName is returned for a message file name that no Maildir
// writer produces; such a name is refused rather than journaled.
var ErrMalformedName = errors.New("malformed Maildir message name")

// System flag letters and their IMAP names. Keyword letters a–z are
// translated through dovecot-keywords.
var systemFlags = map[byte]string{
	'D': `\Draft`,
	'F': `\Flagged`,
	'P': `$Forwarded`,
	'R': `\Answered`,
	'S': `\Seen`,
	'T': `\Deleted`,
}

var systemLetters = func() map[string]byte {
	m := make(map[string]byte, len(systemFlags))
	for l, n := range systemFlags {
		m[n] = l
	}
	return m
}()

// UnknownLetterPrefix marks a flag letter mailfs could not translate (a
// keyword letter with no dovecot-keywords entry, or an unknown capital).
// The letter is kept as it is, so nothing a client set is lost.
const UnknownLetterPrefix = "mailfs-letter:"

// Name is a parsed message file name: Base is the message key (everything
// before the info separator), Info what follows ':' (e.g. "2,FS").
type Name struct {
	Base    string
	Info    string
	HasInfo bool
}

// Letters returns the flag letters of a ":2," info, or "".
func (n Name) Letters() string {
	if strings.HasPrefix(n.Info, "2,") {
		return n.Info[2:]
	}
	return ""
}

// ParseName parses a file name found in new/ or cur/.
func ParseName(name string) (Name, error) {
	if name == "" || name == "." || name == ".." {
		return Name{}, fmt.Errorf("%w: %q", ErrMalformedName, name)
	}
	if name[0] == '.' {
		return Name{}, fmt.Errorf("%w: %q is a hidden name", ErrMalformedName, name)
	}
	if strings.ContainsAny(name, "/\x00") {
		return Name{}, fmt.Errorf("%w: %q contains a slash or NUL", ErrMalformedName, name)
	}
	base, info, has := strings.Cut(name, ":")
	if base == "" {
		return Name{}, fmt.Errorf("%w: %q has an empty unique part", ErrMalformedName, name)
	}
	if has {
		switch {
		case strings.HasPrefix(info, "2,"):
			for i := 2; i < len(info); i++ {
				c := info[i]
				if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z') {
					return Name{}, fmt.Errorf("%w: %q has flag character %q", ErrMalformedName, name, c)
				}
			}
		case strings.HasPrefix(info, "1,"):
			// Experimental-semantics info; kept as it is.
		default:
			return Name{}, fmt.Errorf("%w: %q has info %q (want \":2,FLAGS\")", ErrMalformedName, name, info)
		}
	}
	return Name{Base: base, Info: info, HasInfo: has}, nil
}

// FlagNames translates the flag letters of an info part into sorted IMAP
// flag names. kw maps keyword letters ('a'+i) to names.
func FlagNames(letters string, kw Keywords) []string {
	out := make([]string, 0, len(letters))
	for i := 0; i < len(letters); i++ {
		c := letters[i]
		switch {
		case systemFlags[c] != "":
			out = append(out, systemFlags[c])
		case c >= 'a' && c <= 'z' && int(c-'a') < len(kw) && kw[c-'a'] != "":
			out = append(out, kw[c-'a'])
		default:
			out = append(out, UnknownLetterPrefix+string(c))
		}
	}
	sort.Strings(out)
	return dedup(out)
}

// FlagLetters is the inverse of FlagNames: it returns the letters in
// Maildir order (sorted) and the keyword names that have no letter in kw
// yet, which the caller must add to dovecot-keywords first.
func FlagLetters(names []string, kw Keywords) (letters string, missing []string) {
	var b []byte
	for _, n := range names {
		if l, ok := systemLetters[n]; ok {
			b = append(b, l)
			continue
		}
		if strings.HasPrefix(n, UnknownLetterPrefix) && len(n) == len(UnknownLetterPrefix)+1 {
			b = append(b, n[len(UnknownLetterPrefix)])
			continue
		}
		if i := kw.Index(n); i >= 0 {
			b = append(b, byte('a'+i))
			continue
		}
		missing = append(missing, n)
	}
	sort.Slice(b, func(i, j int) bool { return b[i] < b[j] })
	return string(dedupBytes(b)), missing
}

func dedup(s []string) []string {
	if len(s) < 2 {
		return s
	}
	w := 1
	for i := 1; i < len(s); i++ {
		if s[i] != s[w-1] {
			s[w] = s[i]
			w++
		}
	}
	return s[:w]
}

func dedupBytes(s []byte) []byte {
	if len(s) < 2 {
		return s
	}
	w := 1
	for i := 1; i < len(s); i++ {
		if s[i] != s[w-1] {
			s[w] = s[i]
			w++
		}
	}
	return s[:w]
}
