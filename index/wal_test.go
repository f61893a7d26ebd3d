package index

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestWALReplay(t *testing.T) {
	p := filepath.Join(t.TempDir(), walName)
	w, err := openWAL(p, func(uint64, []mutation) error { t.Fatal("new WAL replayed something"); return nil })
	if err != nil {
		t.Fatal(err)
	}
	if err := w.reset(w.gen + 1); err != nil {
		t.Fatal(err)
	}
	var want [][]mutation
	for i := 1; i <= 5; i++ {
		m := []mutation{{key: []byte(fmt.Sprintf("k%d", i)), value: []byte("v")}, {del: true, key: []byte("d"), value: []byte{}}}
		want = append(want, m)
		if err := w.append(uint64(i), encodeMutations(nil, m)); err != nil {
			t.Fatal(err)
		}
	}
	w.close()
	var got [][]mutation
	var commits []uint64
	w, err = openWAL(p, func(c uint64, m []mutation) error { commits = append(commits, c); got = append(got, m); return nil })
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	if len(got) != 5 || commits[4] != 5 || !reflect.DeepEqual(got[2][0].key, want[2][0].key) || !got[0][1].del {
		t.Fatalf("replayed %d records %v", len(got), commits)
	}
	fi, _ := os.Stat(p)
	if fi.Size() != walSize {
		t.Fatalf("size %d", fi.Size())
	}
}
