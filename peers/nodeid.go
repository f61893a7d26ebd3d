package peers

import (
	"fmt"

	"mailfs/journal"
)

// ParseID reads a node ID written as 64 hex digits, in either case, with
// or without the separators FormatID adds (dashes, spaces, colons).
func ParseID(s string) (journal.NodeID, error) {
	var id journal.NodeID
	var digits []byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '-' || c == ' ' || c == ':':
			continue
		case '0' <= c && c <= '9', 'a' <= c && c <= 'f':
			digits = append(digits, c)
		case 'A' <= c && c <= 'F':
			digits = append(digits, c+'a'-'A')
		default:
			return id, fmt.Errorf("node ID %q: unexpected character %q", s, c)
		}
	}
	if len(digits) != 2*len(id) {
		return id, fmt.Errorf("node ID %q: %d hex digits, want %d", s, len(digits), 2*len(id))
	}
	for i := range id {
		id[i] = unhex(digits[2*i])<<4 | unhex(digits[2*i+1])
	}
	return id, nil
}

func unhex(c byte) byte {
	if c <= '9' {
		return c - '0'
	}
	return c - 'a' + 10
}
