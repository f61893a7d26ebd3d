package fsbench

import (
	"fmt"
	"io"
	"strings"
)

// goal is a design.md §10 target expressed as a throughput ratio.
type goal struct {
	num, den string // targets whose ratio is checked
	min      float64
}

func (g goal) String() string { return fmt.Sprintf("%s/%s>=%.2f", g.num, g.den, g.min) }

// goals holds the §10 targets, keyed by workload (ops/s rows only).
// "readdir+stat of a 50k cur/ <= 3x native" is a throughput ratio >= 1/3.
var goals = map[string]goal{
	WorkDeliver:  {TargetMailfs, TargetLoopback, 0.9},
	WorkFlags:    {TargetMailfs, TargetLoopback, 1.5},
	WorkFlagsPar: {TargetMailfs, TargetLoopback, 1.5},
	WorkDeliverN: {TargetMailfs, TargetLoopback, 0.9},
	WorkFlagsN:   {TargetMailfs, TargetLoopback, 1.5},
	WorkListCold: {TargetMailfs, TargetNative, 1.0 / 3},
	WorkListWarm: {TargetMailfs, TargetNative, 1.0 / 3},
	WorkRead:     {TargetMailfs, TargetNative, 0.9},
}

// WriteTable writes rs as a fixed-width table: one ops/s row per workload
// (and an MB/s row for workloads that move bytes) with the throughput of
// each target, the ratios mailfs/native, mailfs/loopback and
// loopback/native (above 1 means the numerator is faster), and the
// design.md §10 target for that row with "ok" or "MISS". Missing results
// print as "-".
func WriteTable(w io.Writer, rs []Result) {
	byKey := map[[2]string]Result{}
	var order []string
	seen := map[string]bool{}
	for _, wl := range Workloads {
		seen[wl] = true
		order = append(order, wl)
	}
	for _, r := range rs {
		byKey[[2]string{r.Workload, r.Target}] = r
		if !seen[r.Workload] {
			seen[r.Workload] = true
			order = append(order, r.Workload)
		}
	}

	const rowFmt = "%-20s %-5s %12s %12s %12s %9s %9s %9s  %s\n"
	fmt.Fprintf(w, rowFmt, "workload", "unit", "native", "loopback", "mailfs",
		"m/native", "m/loop", "l/native", "design §10 target")
	fmt.Fprintln(w, strings.Repeat("-", 20+1+5+3*13+3*10+2+24))
	for _, wl := range order {
		found, hasBytes := false, false
		for _, tn := range Targets {
			if r, ok := byKey[[2]string{wl, tn}]; ok {
				found = true
				hasBytes = hasBytes || r.Bytes > 0
			}
		}
		if !found {
			continue
		}
		units := []string{"ops/s"}
		if hasBytes {
			units = append(units, "MB/s")
		}
		for _, unit := range units {
			val := map[string]float64{}
			cells := make([]string, 0, len(Targets))
			for _, tn := range Targets {
				r, ok := byKey[[2]string{wl, tn}]
				if !ok || r.Elapsed <= 0 {
					cells = append(cells, "-")
					continue
				}
				v, f := r.OpsPerSec(), "%.0f"
				if unit == "MB/s" {
					v, f = r.MBPerSec(), "%.1f"
				}
				val[tn] = v
				cells = append(cells, fmt.Sprintf(f, v))
			}
			ratio := func(num, den string) string {
				n, ok1 := val[num]
				d, ok2 := val[den]
				if !ok1 || !ok2 || d == 0 {
					return "-"
				}
				return fmt.Sprintf("%.2fx", n/d)
			}
			target := ""
			if g, ok := goals[wl]; ok && unit == "ops/s" {
				target = g.String()
				n, ok1 := val[g.num]
				d, ok2 := val[g.den]
				switch {
				case !ok1 || !ok2 || d == 0:
				case n/d >= g.min:
					target += " ok"
				default:
					target += " MISS"
				}
			}
			row := fmt.Sprintf(rowFmt, wl, unit, cells[0], cells[1], cells[2],
				ratio(TargetMailfs, TargetNative), ratio(TargetMailfs, TargetLoopback),
				ratio(TargetLoopback, TargetNative), target)
			fmt.Fprintln(w, strings.TrimRight(row, " \n"))
		}
	}
}
