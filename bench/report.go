package main

import (
	"fmt"
	"math"
	"slices"
	"strings"
)

// row is one line of the result table: a metric's values by translator
// and repetition.
type row struct {
	label, unit string
	section     int
	maxPerRep   bool
	first       int                          // order of appearance
	values      map[string]map[int][]float64 // translator → rep → values
}

// summary is the median of a row for one translator, or NaN.
func (r *row) summary(tr string) float64 {
	var vals []float64
	for _, v := range r.values[tr] {
		if r.maxPerRep {
			vals = append(vals, slices.Max(v))
		} else {
			vals = append(vals, v...)
		}
	}
	return median(vals)
}

// median returns the median of v, or NaN if v is empty.
func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// format prints a value with three or four significant digits.
func format(v float64) string {
	switch a := math.Abs(v); {
	case math.IsNaN(v):
		return "–"
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

// rows gathers the trials' metrics into rows, in table order.
func (b *Bench) rows() []*row {
	byLabel := map[string]*row{}
	var rows []*row
	for _, t := range b.trials {
		for _, m := range t.Metrics {
			r := byLabel[m.Row]
			if r == nil {
				r = &row{label: m.Row, unit: m.Unit, section: m.Section, maxPerRep: m.MaxPerRep,
					first: len(rows), values: map[string]map[int][]float64{}}
				byLabel[m.Row] = r
				rows = append(rows, r)
			}
			if r.values[t.Translator] == nil {
				r.values[t.Translator] = map[int][]float64{}
			}
			r.values[t.Translator][t.Rep] = append(r.values[t.Translator][t.Rep], m.Value)
		}
	}
	slices.SortStableFunc(rows, func(x, y *row) int {
		if x.section != y.section {
			return x.section - y.section
		}
		return x.first - y.first
	})
	return rows
}

// ratio formats a/b, or "–" if either is missing or b is 0.
func ratio(a, b float64) string {
	if b == 0 || math.IsNaN(a) || math.IsNaN(b) {
		return "–"
	}
	return fmt.Sprintf("%.2f", a/b)
}

// table returns the results as markdown: a header with the conditions,
// then one row per metric with each translator's median and the ratio
// gopasst/pasta, then the failed trials. If the second reference (-pasta2),
// the variant gopasst --no-offload or a kernel baseline (veth, loopback)
// ran, two more columns each show its median and the ratio of gopasst to
// it, where it ran; the baselines' columns show "—" in the rows of the
// translator's own costs (CPU time, memory), which they do not have.
func (b *Bench) table() string {
	var sb strings.Builder
	o := b.opt
	var extra []string // the other translators that ran, in this order
	for _, name := range []string{pasta2, noOffload, kernelVeth, kernelLoopback} {
		for _, t := range b.trials {
			if t.Translator == name {
				extra = append(extra, name)
				break
			}
		}
	}
	order := "A/B interleaved, order alternating"
	if len(extra) > 0 {
		order = "interleaved, order rotating"
	}
	fmt.Fprintf(&sb, "%s; %s.\n", b.versions(), machine())
	fmt.Fprintf(&sb, "Medians of %d repetitions (%s); trials of %v after %v warm-up, request/response %v, loss search %d steps of %v; flows at %.0f datagrams/s.\n",
		o.Reps, order, o.Dur, o.Warmup, o.RRDur, o.Steps, o.StepDur, o.FlowRate)
	if slices.Contains(extra, kernelVeth) || slices.Contains(extra, kernelLoopback) {
		sb.WriteString("Kernel baselines, the same tools with no translator: veth, a veth pair between the namespace and the host (kernel routing, the translators' MTU); loopback, both ends in the namespace over its loopback; — where a row measures the translator itself.\n")
	}
	sb.WriteString("\n")
	sb.WriteString("| Scenario | gopasst | pasta | gopasst/pasta |")
	align := "|---|---:|---:|---:|"
	for _, name := range extra {
		short := name
		if name == noOffload {
			short = "no-offload"
		}
		fmt.Fprintf(&sb, " %s | gopasst/%s |", name, short)
		align += "---:|---:|"
	}
	sb.WriteString(" Unit |\n" + align + "---|\n")
	for _, r := range b.rows() {
		g, p := r.summary("gopasst"), r.summary("pasta")
		fmt.Fprintf(&sb, "| %s | %s | %s | %s |", r.label, format(g), format(p), ratio(g, p))
		for _, name := range extra {
			n := r.summary(name)
			nv, nr := "", ""
			if !math.IsNaN(n) {
				nv, nr = format(n), ratio(g, n)
			} else if (name == kernelVeth || name == kernelLoopback) && translatorCost(r.section) {
				nv, nr = "—", "—"
			}
			fmt.Fprintf(&sb, " %s | %s |", nv, nr)
		}
		fmt.Fprintf(&sb, " %s |\n", r.unit)
	}
	var bad []string
	for _, t := range b.trials {
		if t.Err != "" {
			bad = append(bad, fmt.Sprintf("- %s, %s, repetition %d: failed: %s", t.Scenario, t.Translator, t.Rep+1, oneLine(t.Err)))
		} else if !t.ViaOK || t.Bad > 0 {
			bad = append(bad, fmt.Sprintf("- %s, %s, repetition %d: %s", t.Scenario, t.Translator, t.Rep+1, t.Note))
		}
	}
	if len(bad) > 0 {
		fmt.Fprintf(&sb, "\nProblems:\n\n%s\n", strings.Join(bad, "\n"))
	}
	return sb.String()
}

// oneLine shortens a multi-line error for the table.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}
