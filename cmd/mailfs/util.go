package main

import (
	"encoding/json"
	"io"
	"mailfs/journal"
	"strings"
)

func mustJSON(v any) []byte {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		panic("mailfs: BUG: cannot encode " + err.Error())
	}
	return append(b, '\n')
}

func containsAny(s string, subs ...string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

var ioEOF = io.EOF

type journalOp = journal.Op
