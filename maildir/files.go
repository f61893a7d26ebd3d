package maildir

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"strconv"
	"strings"
)

// Keywords is a mailbox's keyword letter map: Keywords[i] is the name of
// letter 'a'+i ("" where unassigned).
type Keywords []string

// Index returns the position of name, or -1.
func (k Keywords) Index(name string) int {
	for i, n := range k {
		if n == name {
			return i
		}
	}
	return -1
}

// ParseKeywords reads a dovecot-keywords file: lines "<index> <name>".
// Lines that do not parse, and indexes past 'z', are ignored the way
// Dovecot ignores them.
func ParseKeywords(data []byte) Keywords {
	var kw Keywords
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		idx, name, ok := strings.Cut(sc.Text(), " ")
		if !ok || name == "" {
			continue
		}
		i, err := strconv.Atoi(idx)
		if err != nil || i < 0 || i >= 26 {
			continue
		}
		for len(kw) <= i {
			kw = append(kw, "")
		}
		kw[i] = name
	}
	return kw
}

// FormatKeywords writes kw in dovecot-keywords format.
func FormatKeywords(kw Keywords) []byte {
	var b bytes.Buffer
	for i, n := range kw {
		if n != "" {
			b.WriteString(strconv.Itoa(i))
			b.WriteByte(' ')
			b.WriteString(n)
			b.WriteByte('\n')
		}
	}
	return b.Bytes()
}

// ParseSubscriptions returns the mailbox names listed in a Dovecot
// subscriptions file, in file order, without duplicates. The version
// header ("V\t2") and empty lines are skipped. Names are kept exactly as the
// file spells them, so they can be written back byte for byte.
func ParseSubscriptions(data []byte) []string {
	var names []string
	seen := map[string]bool{}
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSuffix(line, "\r")
		if line == "" || (i == 0 && strings.HasPrefix(line, "V\t")) {
			continue
		}
		if !seen[line] {
			seen[line] = true
			names = append(names, line)
		}
	}
	return names
}

// UidlistGUID returns the mailbox GUID from the header of a dovecot-uidlist
// file (version 3: "3 V<uidvalidity> N<next uid> G<guid hex> ...").
func UidlistGUID(data []byte) ([16]byte, bool) {
	var g [16]byte
	header, _, _ := bytes.Cut(data, []byte("\n"))
	fields := strings.Fields(string(header))
	if len(fields) < 2 || fields[0] != "3" {
		return g, false
	}
	for _, f := range fields[1:] {
		if strings.HasPrefix(f, "G") {
			raw, err := hex.DecodeString(f[1:])
			if err != nil || len(raw) != 16 {
				return g, false
			}
			copy(g[:], raw)
			return g, g != [16]byte{}
		}
	}
	return g, false
}
