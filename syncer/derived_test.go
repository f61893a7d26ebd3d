package syncer

import (
	"testing"

	"mailfs/index"
	"mailfs/journal"
)

// An op naming the GUID that a folder's kept mail gets after one or a few
// deletes in a row names that folder (not another to merge with).
func TestDerivedFrom(t *testing.T) {
	g := journal.GUID{1, 2, 3}
	once := index.RecreatedGUID(g)
	twice := index.RecreatedGUID(once)
	for _, tc := range []struct {
		name string
		g    journal.GUID
		want bool
	}{
		{"after one delete", once, true},
		{"after two deletes", twice, true},
		{"the folder itself", g, false},
		{"another folder", journal.GUID{9}, false},
	} {
		if got := derivedFrom(tc.g, g); got != tc.want {
			t.Errorf("%s: derivedFrom = %v, want %v", tc.name, got, tc.want)
		}
	}
	if derivedFrom(g, once) {
		t.Error("a folder is not derived from the one derived from it")
	}
}
