package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestEveryCommandHasHelp: `mailfs COMMAND --help` says what the command
// does, lists its flags and gives an example, and exits 0.
func TestEveryCommandHasHelp(t *testing.T) {
	cmds := [][]string{{"pair", "invite"}, {"pair", "join"}, {"pair"}}
	for _, c := range commands() {
		if c.name != "pair" {
			cmds = append(cmds, []string{c.name})
		}
	}
	for _, c := range cmds {
		var out, errs bytes.Buffer
		code := run(append(append([]string{}, c...), "--help"), &out, &errs)
		text := out.String() + errs.String()
		name := strings.Join(c, " ")
		if code != 0 {
			t.Errorf("mailfs %s --help: exit %d", name, code)
		}
		for _, want := range []string{"usage: mailfs " + name, "Example:"} {
			if !strings.Contains(text, want) {
				t.Errorf("mailfs %s --help lacks %q:\n%s", name, want, text)
			}
		}
		if name != "pair" && !strings.Contains(text, "Flags:") {
			t.Errorf("mailfs %s --help does not list its flags:\n%s", name, text)
		}
	}
}
