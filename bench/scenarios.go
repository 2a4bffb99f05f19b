package main

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"time"
)

// Sections of the result table, in order.
const (
	secGoodput = iota
	secPerCPU
	secRate
	secRR
	secFlows
	secRSS
)

// Metric is one measured value of a trial, a cell of the result table.
type Metric struct {
	// Row is the label of the table row.
	Row string `json:"row"`
	// Unit is the unit of Value, with ↑ (more is better) or ↓.
	Unit string `json:"unit"`
	// Section orders the rows.
	Section int `json:"section"`
	// MaxPerRep makes the table show the median over repetitions of the
	// largest value in each repetition, instead of the median of all.
	MaxPerRep bool `json:"maxPerRep,omitempty"`
	// Value is the measurement, in Unit.
	Value float64 `json:"value"`
}

// Trial is the result of one scenario run once with one translator.
type Trial struct {
	Scenario   string `json:"scenario"`
	Translator string `json:"translator"`
	Rep        int    `json:"rep"`
	// Metrics are the values measured.
	Metrics []Metric `json:"metrics"`
	// Moved is the payload that reached the receiver intact during the
	// measured part of the trial, in bytes.
	Moved uint64 `json:"moved"`
	// Via is the path the traffic must take: "tap" or "splice".
	Via string `json:"via,omitempty"`
	// ViaBytes is the payload that reached the receiver intact over the
	// span the path is checked on: for goodput and flows trials, all the
	// receiver counted, from its start to its end (a receiver that falls
	// behind counts in the measured part datagrams that crossed the tap
	// before it, and a busy machine can delay the counters' readings),
	// otherwise the same as Moved.
	ViaBytes uint64 `json:"viaBytes"`
	// TapBytes are the bytes through the namespace's tap device over the
	// same span (frames, both directions): for goodput and flows trials,
	// from before the receiver started to after it stopped.
	TapBytes uint64 `json:"tapBytes"`
	// ViaOK reports whether TapBytes agree with Via: at least 90% of
	// ViaBytes for the tap, under 1% of ViaBytes for splice.
	ViaOK bool `json:"viaOK"`
	// Bad counts the datagrams the receiver got with the wrong size or
	// content (goodput and flows trials); a trial with bad datagrams
	// counts as failed.
	Bad uint64 `json:"bad,omitempty"`
	// Note says what else was seen (losses, bad datagrams, errors).
	Note string `json:"note,omitempty"`
	// Err is set when the trial failed; then Metrics are empty.
	Err string `json:"err,omitempty"`
}

func (t *Trial) add(section int, row, unit string, v float64) {
	t.Metrics = append(t.Metrics, Metric{Row: row, Unit: unit, Section: section, Value: v})
}

func (t *Trial) note(format string, args ...any) {
	if t.Note != "" {
		t.Note += "; "
	}
	t.Note += fmt.Sprintf(format, args...)
}

// ended records, once a trial's load has stopped, the payload it moved
// and the tap bytes since tap0, or returns the translator's failure.
func (t *Trial) ended(in *Instance, tap0, moved uint64) error {
	if err := in.Err(); err != nil {
		return err
	}
	tap1, _ := in.TapBytes()
	t.Moved, t.TapBytes = moved, tap1-tap0
	return nil
}

// checkVia sets ViaBytes to payload and ViaOK from it and TapBytes:
// frames on the tap carry the payload plus headers, so a tap path shows at
// least as many tap bytes as payload bytes; splice shows almost none
// (neighbour discovery and the like).
func (t *Trial) checkVia(payload uint64) {
	t.ViaBytes = payload
	switch t.Via {
	case "tap":
		// The two counters are read one after the other, while
		// datagrams are in flight: allow for some of them.
		t.ViaOK = payload > 0 && t.TapBytes >= payload/10*9
	case "splice":
		t.ViaOK = payload > 0 && t.TapBytes*100 < payload
	}
	if !t.ViaOK {
		t.note("traffic not on the %s path (%d payload bytes, %d tap bytes)", t.Via, payload, t.TapBytes)
	}
}

// Family is an IP version with the sandbox's addresses.
type Family struct {
	Name, Label string
	// Loopback is the host's (and namespace's) loopback address.
	Loopback netip.Addr
	// Gateway is the namespace's gateway, which the translators map to
	// the host's loopback.
	Gateway netip.Addr
	// Host is the sandbox host's own address, which the namespace has too.
	Host netip.Addr
	// Any is the unspecified address.
	Any netip.Addr
}

// Path is a way through a translator.
type Path struct {
	Name, Label string
	// Via is "tap" or "splice".
	Via string
	// Sender and Receiver are where the load tools run.
	Sender, Receiver Side
	// To and Listen give the sender's destination and the receiver's
	// address for a family.
	To, Listen func(Family) netip.AddrPort
}

// The four paths of a translator. Datagrams the namespace sends to the
// gateway, and datagrams the host sends from a non-loopback address to a
// -u port, cross the tap; loopback datagrams to the -U or -u port are
// spliced, socket to socket.
var (
	tapNSHost = Path{Name: "tap-ns-host", Label: "tap ns→host", Via: "tap", Sender: InNS, Receiver: OnHost,
		To:     func(f Family) netip.AddrPort { return netip.AddrPortFrom(f.Gateway, portHost) },
		Listen: func(f Family) netip.AddrPort { return netip.AddrPortFrom(f.Loopback, portHost) }}
	tapHostNS = Path{Name: "tap-host-ns", Label: "tap host→ns", Via: "tap", Sender: OnHost, Receiver: InNS,
		To:     func(f Family) netip.AddrPort { return netip.AddrPortFrom(f.Host, portFwd) },
		Listen: func(f Family) netip.AddrPort { return netip.AddrPortFrom(f.Any, portFwd) }}
	spliceNSHost = Path{Name: "splice-ns-host", Label: "splice ns→host", Via: "splice", Sender: InNS, Receiver: OnHost,
		To:     func(f Family) netip.AddrPort { return netip.AddrPortFrom(f.Loopback, portNS) },
		Listen: func(f Family) netip.AddrPort { return netip.AddrPortFrom(f.Loopback, portNS) }}
	spliceHostNS = Path{Name: "splice-host-ns", Label: "splice host→ns", Via: "splice", Sender: OnHost, Receiver: InNS,
		To:     func(f Family) netip.AddrPort { return netip.AddrPortFrom(f.Loopback, portFwd) },
		Listen: func(f Family) netip.AddrPort { return netip.AddrPortFrom(f.Any, portFwd) }}
)

// Scenario is one measurement, run for both translators in every
// repetition, for the variants of gopasst too if Variants is set, and
// for a kernel baseline if Baseline names one.
type Scenario struct {
	// Name selects the scenario with -run.
	Name string
	Run  func(ctx context.Context, b *Bench, in *Instance, t *Trial) error
	// Variants also runs the scenario with the translators marked
	// Variant (gopasst --no-offload).
	Variants bool
	// TCP makes the translators forward the TCP ports (see
	// [translatorArgs]); the other scenarios run them with -t none -T
	// none.
	TCP bool
	// Args are more options for every translator (e.g. "-m 1500").
	Args []string
	// Baseline is the kernel baseline that runs the scenario too
	// (kernelVeth or kernelLoopback, see veth.go), or empty.
	Baseline string
}

// rateSize is the payload of the loss search, the flows test, and the
// smaller of the two goodput sizes; also the segment size of the
// segmenting sender.
const rateSize = 1372

// gsoSegs is the number of segments per message of the segmenting
// sender: 47 × 1372 = 64,484 bytes per sendmsg.
const gsoSegs = 47

// scenarios returns every scenario, in the order of a repetition.
func scenarios(b *Bench) []Scenario {
	var out []Scenario
	paths := []Path{tapNSHost, tapHostNS, spliceNSHost, spliceHostNS}
	for _, p := range paths {
		for _, f := range families {
			for _, size := range []int{rateSize, 65000} {
				out = append(out, Scenario{Name: fmt.Sprintf("goodput/%s/%s/%d", p.Name, f.Name, size),
					Run: func(ctx context.Context, b *Bench, in *Instance, t *Trial) error {
						return b.goodput(ctx, in, t, p, f, size)
					}, Variants: p.Via == "tap"})
			}
		}
	}
	for _, p := range []Path{tapNSHost, tapHostNS} {
		for _, f := range families {
			out = append(out, Scenario{Name: fmt.Sprintf("goodput-gso/%s/%s/%d", p.Name, f.Name, rateSize),
				Run: func(ctx context.Context, b *Bench, in *Instance, t *Trial) error {
					return b.goodputGSO(ctx, in, t, p, f)
				}, Variants: true})
		}
	}
	for _, p := range []Path{tapNSHost, tapHostNS} {
		for _, f := range families {
			out = append(out, Scenario{Name: fmt.Sprintf("maxrate/%s/%s", p.Name, f.Name),
				Run: func(ctx context.Context, b *Bench, in *Instance, t *Trial) error {
					return b.maxRate(ctx, in, t, p, f)
				}})
		}
	}
	for _, p := range []Path{tapNSHost, spliceNSHost} {
		for _, f := range families {
			out = append(out, Scenario{Name: fmt.Sprintf("rr/%s/%s", p.Via, f.Name),
				Run: func(ctx context.Context, b *Bench, in *Instance, t *Trial) error {
					return b.requestResponse(ctx, in, t, p, f)
				}})
		}
	}
	for _, n := range b.opt.Flows {
		out = append(out, Scenario{Name: fmt.Sprintf("flows/%d", n),
			Run: func(ctx context.Context, b *Bench, in *Instance, t *Trial) error {
				return b.flows(ctx, in, t, n)
			}})
	}
	out = append(out, tcpScenarios()...)
	return append(out, pingScenarios()...)
}

var families = []Family{
	{Name: "ipv4", Label: "IPv4", Loopback: netip.MustParseAddr("127.0.0.1"), Gateway: netip.MustParseAddr("192.0.2.1"),
		Host: netip.MustParseAddr("192.0.2.2"), Any: netip.IPv4Unspecified()},
	{Name: "ipv6", Label: "IPv6", Loopback: netip.IPv6Loopback(), Gateway: netip.MustParseAddr("2001:db8::1"),
		Host: netip.MustParseAddr("2001:db8::2"), Any: netip.IPv6Unspecified()},
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-time.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// window is a snapshot at the start or end of a measured period.
type window struct {
	at        time.Time
	sink      Counters
	send      Counters
	cpu       float64
	sleeps    uint64 // the translator's blocking waits (Instance.Sleeps)
	tap, drop uint64
}

// snapshot reads the translator's CPU time, the tap counters and the
// sink's and (if not nil) the sender's counters.
func (b *Bench) snapshot(in *Instance, sink, send *LoadProc) (window, error) {
	w := window{at: time.Now(), cpu: in.CPU(), sleeps: in.Sleeps()}
	w.tap, w.drop = in.TapBytes()
	var err error
	if w.sink, err = sink.Snap(); err != nil {
		return w, err
	}
	if send != nil {
		w.send, err = send.Snap()
	}
	return w, err
}

// measured is the outcome of [Bench.measure].
type measured struct {
	w0, w1     window   // at the start and the end of the measured part
	sent, recv Counters // the sender's and the sink's final counters
	rss        float64  // the translator's peak RSS afterwards
}

// secs is the length of the measured part, cpu the translator's CPU
// seconds in it, got the datagrams that arrived intact in it.
func (m *measured) secs() float64 { return m.w1.at.Sub(m.w0.at).Seconds() }
func (m *measured) cpu() float64  { return m.w1.cpu - m.w0.cpu }
func (m *measured) got() uint64   { return m.w1.sink.Dgrams - m.w0.sink.Dgrams }

// measure starts a sink (on the receiver's side of path p, for datagrams
// of size bytes, with UDP_GRO if gro) and then the sender (load tool args,
// on the sender's side), lets them run for warm, measures for b.opt.Dur,
// stops both, and records in t what moved and where. before, if not nil,
// runs just before the measured part starts.
func (b *Bench) measure(ctx context.Context, in *Instance, t *Trial, p Path, listen netip.AddrPort, size int, gro bool,
	warm time.Duration, before func(), args ...string) (*measured, error) {
	t.Via = p.Via
	tap0, _ := in.TapBytes()
	sinkArgs := []string{"sink", "-l", listen.String(), "-size", strconv.Itoa(size)}
	if gro {
		sinkArgs = append(sinkArgs, "-gro")
	}
	sink, err := b.startLoad(p.Receiver, in, sinkArgs...)
	if err != nil {
		return nil, err
	}
	defer sink.Kill()
	send, err := b.startLoad(p.Sender, in, args...)
	if err != nil {
		return nil, err
	}
	defer send.Kill()
	if err := sleep(ctx, warm); err != nil {
		return nil, err
	}
	if before != nil {
		before()
	}
	m := &measured{}
	if m.w0, err = b.snapshot(in, sink, send); err != nil {
		return nil, err
	}
	if err := sleep(ctx, b.opt.Dur); err != nil {
		return nil, err
	}
	if m.w1, err = b.snapshot(in, sink, send); err != nil {
		return nil, err
	}
	if m.sent, err = send.Stop(); err != nil {
		return nil, err
	}
	if m.recv, err = sink.Stop(); err != nil {
		return nil, err
	}
	tap1, _ := in.TapBytes()
	if err := in.Err(); err != nil {
		return nil, err
	}
	m.rss = in.RSS()
	t.Moved = m.w1.sink.Bytes - m.w0.sink.Bytes
	t.TapBytes = tap1 - tap0
	t.checkVia(m.recv.Bytes)
	t.note("measured: sent %d, received %d, tap drops %d, translator CPU %.3f s in %.2f s",
		m.w1.send.Dgrams-m.w0.send.Dgrams, m.got(), m.w1.drop-m.w0.drop, m.cpu(), m.secs())
	if gro {
		if msgs := m.w1.sink.Msgs - m.w0.sink.Msgs; msgs > 0 {
			t.note("%.1f datagrams per message received", float64(m.got())/float64(msgs))
		}
	}
	if t.Bad = m.recv.Bad; t.Bad > 0 {
		t.note("%d bad datagrams", m.recv.Bad)
	}
	if m.sent.Errors > 0 {
		t.note("sender errors %d (%s)", m.sent.Errors, m.sent.LastErr)
	}
	return m, nil
}

// goodput floods path p with datagrams of size bytes and measures, after
// the warm-up, what reaches the receiver intact per second, and per
// second of translator CPU.
func (b *Bench) goodput(ctx context.Context, in *Instance, t *Trial, p Path, f Family, size int) error {
	m, err := b.measure(ctx, in, t, p, p.Listen(f), size, false, b.opt.Warmup, nil,
		"blast", "-to", p.To(f).String(), "-size", strconv.Itoa(size))
	if err != nil {
		return err
	}
	t.addGoodput(m, fmt.Sprintf("%s, %s, %d B", p.Label, f.Label, size))
	return nil
}

// goodputGSO is goodput with a segmenting sender and a GRO receiver, as
// QUIC stacks use UDP: the sender writes gsoSegs datagrams of rateSize
// bytes per sendmsg with UDP_SEGMENT, as fast as the kernel takes them;
// the sink receives with UDP_GRO, splits what it gets at the segment size
// and counts the datagrams that are intact and exactly rateSize long. The
// same tools run for every translator: the reference, without offloads,
// sees single datagrams from the kernel and hands it single datagrams.
func (b *Bench) goodputGSO(ctx context.Context, in *Instance, t *Trial, p Path, f Family) error {
	m, err := b.measure(ctx, in, t, p, p.Listen(f), rateSize, true, b.opt.Warmup, nil,
		"gso", "-to", p.To(f).String(), "-size", strconv.Itoa(rateSize), "-segs", strconv.Itoa(gsoSegs))
	if err != nil {
		return err
	}
	t.addGoodput(m, fmt.Sprintf("%s, %s, %d × %d B per sendmsg (UDP_SEGMENT), UDP_GRO receiver", p.Label, f.Label, gsoSegs, rateSize))
	return nil
}

// addGoodput adds the metrics of a goodput trial: payload per second,
// payload per translator CPU second, and the peak RSS.
func (t *Trial) addGoodput(m *measured, label string) {
	t.add(secGoodput, "Goodput, "+label, "Mbit/s ↑", float64(t.Moved)*8/m.secs()/1e6)
	if m.cpu() > 0 {
		t.add(secPerCPU, "Goodput per translator CPU second, "+label, "MB/CPU-s ↑", float64(t.Moved)/m.cpu()/1e6)
	}
	t.add(secRSS, "Peak RSS under full load (largest of the goodput trials)", "MiB ↓", m.rss)
	t.Metrics[len(t.Metrics)-1].MaxPerRep = true
}

// maxRate searches the highest rate of rateSize datagrams that crosses
// path p with under 1% loss: each step sends at a fixed rate for StepDur,
// then compares what the sink counted with what was sent. A step also
// fails if the sender could not keep the rate. The search starts from
// the translator's goodput of the same repetition, doubles while steps
// pass and bisects once one failed.
func (b *Bench) maxRate(ctx context.Context, in *Instance, t *Trial, p Path, f Family) error {
	t.Via = p.Via
	sz := strconv.Itoa(rateSize)
	sink, err := b.startLoad(p.Receiver, in, "sink", "-l", p.Listen(f).String(), "-size", sz)
	if err != nil {
		return err
	}
	defer sink.Kill()
	step := func(rate float64, dur time.Duration) (loss float64, ok bool, err error) {
		before, err := sink.Snap()
		if err != nil {
			return 0, false, err
		}
		tap0, _ := in.TapBytes()
		send, err := b.startLoad(p.Sender, in, "paced", "-to", p.To(f).String(), "-size", sz,
			"-rate", strconv.FormatFloat(rate, 'f', 0, 64), "-dur", dur.String())
		if err != nil {
			return 0, false, err
		}
		sent, err := send.Final(dur + 10*time.Second)
		if err != nil {
			return 0, false, err
		}
		// Let queues drain before counting.
		if err := sleep(ctx, 200*time.Millisecond); err != nil {
			return 0, false, err
		}
		after, err := sink.Snap()
		if err != nil {
			return 0, false, err
		}
		got := after.Dgrams - before.Dgrams
		t.Moved += after.Bytes - before.Bytes
		tap1, _ := in.TapBytes()
		t.TapBytes += tap1 - tap0
		if sent.Dgrams == 0 {
			return 1, false, nil
		}
		loss = 1 - float64(got)/float64(sent.Dgrams)
		kept := sent.Secs > 0 && float64(sent.Dgrams)/sent.Secs >= 0.97*rate
		if !kept {
			t.note("sender reached only %.0f of %.0f/s", float64(sent.Dgrams)/sent.Secs, rate)
		}
		return loss, loss < 0.01 && kept, nil
	}
	// Warm up: flows, neighbour resolution.
	if _, _, err := step(1000, 200*time.Millisecond); err != nil {
		return err
	}
	t.Moved, t.TapBytes = 0, 0
	rate := b.goodputRate(t.Translator, t.Rep, p, f)
	best, worst := 0.0, 0.0
	var trace []string
	for range b.opt.Steps {
		loss, ok, err := step(rate, b.opt.StepDur)
		if err != nil {
			return err
		}
		trace = append(trace, fmt.Sprintf("%.0f/s: %.2f%%", rate, loss*100))
		if ok {
			best = rate
		} else {
			worst = rate
		}
		if worst == 0 {
			rate *= 2
		} else {
			rate = (best + worst) / 2
		}
	}
	if err := in.Err(); err != nil {
		return err
	}
	t.checkVia(t.Moved)
	t.note("steps %v", trace)
	t.add(secRate, fmt.Sprintf("Highest rate with < 1%% loss, %s, %s, %d B", p.Label, f.Label, rateSize), "kdatagrams/s ↑", best/1e3)
	return nil
}

// goodputRate is where the loss search of translator tr starts: half its
// goodput of rateSize datagrams on the same path in repetition rep, or
// 50,000 datagrams a second without one.
func (b *Bench) goodputRate(tr string, rep int, p Path, f Family) float64 {
	name := fmt.Sprintf("goodput/%s/%s/%d", p.Name, f.Name, rateSize)
	for _, t := range b.trials {
		if t.Scenario != name || t.Translator != tr || t.Rep != rep {
			continue
		}
		for _, m := range t.Metrics {
			if r := m.Value * 1e6 / 8 / rateSize / 2; m.Section == secGoodput && r > 1000 {
				return r
			}
		}
	}
	return 50000
}

// requestResponse measures round trips of one 64-byte datagram at a time
// from a client in the namespace to an echo server on the host, over
// path p (the tap or splice, namespace to host).
func (b *Bench) requestResponse(_ context.Context, in *Instance, t *Trial, p Path, f Family) error {
	t.Via = p.Via
	echo, err := b.startLoad(p.Receiver, in, "echo", "-l", p.Listen(f).String())
	if err != nil {
		return err
	}
	defer echo.Kill()
	tap0, _ := in.TapBytes()
	rr, err := b.startLoad(p.Sender, in, "rr", "-to", p.To(f).String(), "-size", "64", "-dur", b.opt.RRDur.String())
	if err != nil {
		return err
	}
	defer rr.Kill()
	res, err := rr.Final(b.opt.RRDur + time.Minute)
	if err != nil {
		return err
	}
	if _, err := echo.Stop(); err != nil {
		return err
	}
	if err := t.ended(in, tap0, res.Bytes); err != nil {
		return err
	}
	t.checkVia(t.Moved)
	if res.Lost > 0 || res.Bad > 0 {
		t.note("%d requests lost, %d stale answers", res.Lost, res.Bad)
	}
	label := fmt.Sprintf("64 B, %s, %s", p.Via, f.Label)
	if res.Secs > 0 {
		t.add(secRR, "Round trips per second, "+label, "1/s ↑", float64(res.Dgrams)/res.Secs)
	}
	t.add(secRR, "Round-trip time p99, "+label, "µs ↓", res.P99us)
	return nil
}

// flows sends FlowRate datagrams of rateSize a second from n sockets in
// the namespace, round robin, to the host through the tap, and measures
// the translator's CPU time per datagram once every flow exists.
func (b *Bench) flows(ctx context.Context, in *Instance, t *Trial, n int) error {
	f := families[0]
	p := tapNSHost
	rate := b.opt.FlowRate
	// Every flow must exist before measuring: wait twice the time a
	// round over all sockets takes.
	warm := b.opt.Warmup + time.Duration(2*float64(n)/rate*float64(time.Second))
	// Both translators open a host socket per flow (source port).
	var sockets int
	m, err := b.measure(ctx, in, t, p, p.Listen(f), rateSize, false, warm,
		func() { sockets = len(procLines(b.probe.pid(), "udp")) },
		"flows", "-to", p.To(f).String(), "-size", strconv.Itoa(rateSize),
		"-flows", strconv.Itoa(n), "-rate", strconv.FormatFloat(rate, 'f', 0, 64))
	if err != nil {
		return err
	}
	t.note("%d IPv4 UDP sockets on the host", sockets)
	if sent := m.w1.send.Dgrams - m.w0.send.Dgrams; float64(m.got()) < 0.95*float64(sent) {
		t.note("only %d of %d datagrams arrived", m.got(), sent)
	}
	label := fmt.Sprintf("%d active flow", n)
	if n != 1 {
		label = fmt.Sprintf("%s active flows", commas(n))
	}
	if m.got() > 0 {
		t.add(secFlows, "Translator CPU per datagram, "+label, "µs ↓", m.cpu()/float64(m.got())*1e6)
	}
	t.add(secRSS, "Peak RSS, "+label, "MiB ↓", m.rss)
	return nil
}

// commas formats n with thousands separators.
func commas(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
