package e2e_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
	"github.com/gopasst/gopasst/internal/e2e/watch"
	"github.com/gopasst/gopasst/internal/wirecheck"
)

// ICMP echo (ping) through gopasst: the guest's echo requests leave from
// unprivileged ping sockets of the host (SOCK_DGRAM, IPPROTO_ICMP or
// IPPROTO_ICMPV6), whose identifier the kernel picks; the replies reach
// the guest with its own identifier, sequence and payload.
//
// Ping sockets need the group of the process that opens them in
// net.ipv4.ping_group_range of its network namespace (for ICMPv6 too).
// gopasst runs in the sandbox host, where a new namespace starts with
// "1 0" (nobody), so the tests open the range there, and only there.

// pingEnv, when set to "COUNT SIZE DST/ID[,DST/ID...]", turns the test
// binary into a pinger (see pingMain): one raw ICMP socket per DST/ID
// pair, all at once.
const pingEnv = "GOPASST_E2E_PING"

// The helper runs from init, before TestMain (in pasta_test.go, which
// dispatches the other helpers): a test binary started with pingEnv only
// pings.
func init() {
	if spec := os.Getenv(pingEnv); spec != "" {
		os.Exit(pingMain(spec))
	}
}

// pingSeqStart is the first sequence number the helper sends: the
// sequence wraps after two requests.
const pingSeqStart = 65534

// pingResult is what the helper prints for one pinger, one JSON line.
type pingResult struct {
	Dst string `json:"dst"`
	ID  uint16 `json:"id"`
	// Sent requests; Received replies that were right: our identifier
	// and a sequence we sent, from the address pinged, its payload
	// byte-exact, a valid checksum, once.
	Sent     int `json:"sent"`
	Received int `json:"received"`
	// Bad counts replies with our identifier that were wrong in any
	// way; Errors says how (the first few).
	Bad    int      `json:"bad"`
	Errors []string `json:"errors,omitempty"`
	// Others counts echo replies for other pingers of the same run
	// (every raw socket sees every reply).
	Others int `json:"others"`
}

// pingPayload is the payload of request (dst, id, seq): random, and
// different for every request, so that a reply carrying another
// request's payload is caught.
func pingPayload(dst netip.Addr, id, seq uint16, size int) []byte {
	a := dst.As16()
	r := rand.New(rand.NewPCG(binary.BigEndian.Uint64(a[8:])^binary.BigEndian.Uint64(a[:8]), uint64(id)<<16|uint64(seq)))
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

type pinger struct {
	dst netip.Addr
	id  uint16
}

// pingMain parses spec (see pingEnv), runs the pingers at once, prints
// their results and returns 0 if every request got its right reply and
// nothing was wrong, 3 if not, 1 if the pingers could not run. Requests
// go out every 50 ms; replies are awaited for 2 s after the last one.
func pingMain(spec string) int {
	f := strings.Fields(spec)
	if len(f) != 3 {
		fmt.Println("ping: bad spec", spec)
		return 1
	}
	count, err1 := strconv.Atoi(f[0])
	size, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil || count < 1 || size < 0 || size > 65000 {
		fmt.Println("ping: bad spec", spec)
		return 1
	}
	var pingers []pinger
	for _, p := range strings.Split(f[2], ",") {
		d, i, ok := strings.Cut(p, "/")
		dst, err := netip.ParseAddr(d)
		id, err2 := strconv.ParseUint(i, 0, 16)
		if !ok || err != nil || err2 != nil {
			fmt.Println("ping: bad pinger", p)
			return 1
		}
		pingers = append(pingers, pinger{dst, uint16(id)})
	}
	results := make([]pingResult, len(pingers))
	errs := make([]error, len(pingers))
	var wg sync.WaitGroup
	for i, p := range pingers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = runPinger(p, pingers, count, size)
		}()
	}
	wg.Wait()
	status := 0
	for i, r := range results {
		if errs[i] != nil {
			fmt.Println("ping:", errs[i])
			return 1
		}
		b, _ := json.Marshal(r)
		fmt.Println(string(b))
		if r.Received != r.Sent || r.Bad != 0 {
			status = 3
		}
	}
	return status
}

// runPinger sends count echo requests of size payload bytes from a raw
// socket of its own and checks the replies. all lists every pinger of
// the run, so that replies meant for another one are told apart.
func runPinger(p pinger, all []pinger, count, size int) (pingResult, error) {
	res := pingResult{Dst: p.dst.String(), ID: p.id}
	family, proto, reqType, repType := unix.AF_INET, unix.IPPROTO_ICMP, byte(8), byte(0)
	var sa unix.Sockaddr
	if p.dst.Is6() {
		family, proto, reqType, repType = unix.AF_INET6, unix.IPPROTO_ICMPV6, 128, 129
		sa = &unix.SockaddrInet6{Addr: p.dst.As16()}
	} else {
		sa = &unix.SockaddrInet4{Addr: p.dst.As4()}
	}
	fd, err := unix.Socket(family, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return res, fmt.Errorf("raw socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 50000}); err != nil {
		return res, err
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 1<<20); err != nil {
		return res, err
	}
	bad := func(format string, args ...any) {
		res.Bad++
		if len(res.Errors) < 5 {
			res.Errors = append(res.Errors, fmt.Sprintf(format, args...))
		}
	}

	var mu sync.Mutex // guards sent, got and nSent
	sent := map[uint16][]byte{}
	nSent := 0
	got := map[uint16]bool{}
	sendErr := make(chan error, 1)
	doneSending := make(chan struct{})
	go func() {
		defer close(doneSending)
		for i := 0; i < count; i++ {
			seq := uint16(pingSeqStart + i)
			payload := pingPayload(p.dst, p.id, seq, size)
			msg := append([]byte{reqType, 0, 0, 0, byte(p.id >> 8), byte(p.id), byte(seq >> 8), byte(seq)}, payload...)
			if !p.dst.Is6() {
				binary.BigEndian.PutUint16(msg[2:], wirecheck.Checksum(msg)) // ICMPv6: the kernel sums
			}
			mu.Lock()
			sent[seq] = payload
			mu.Unlock()
			if err := unix.Sendto(fd, msg, 0, sa); err != nil {
				sendErr <- fmt.Errorf("send to %v: %w", p.dst, err)
				return
			}
			mu.Lock()
			nSent++
			mu.Unlock()
			time.Sleep(50 * time.Millisecond)
		}
	}()

	buf := make([]byte, 65536)
	var deadline time.Time
	for {
		select {
		case <-doneSending:
			if deadline.IsZero() {
				deadline = time.Now().Add(2 * time.Second)
			}
		default:
		}
		mu.Lock()
		complete := !deadline.IsZero() && len(got) == nSent
		mu.Unlock()
		if complete || (!deadline.IsZero() && time.Now().After(deadline)) {
			break
		}
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if err == unix.EAGAIN || err == unix.EINTR {
			continue
		}
		if err != nil {
			return res, fmt.Errorf("receive: %w", err)
		}
		msg := buf[:n]
		var src netip.Addr
		switch a := from.(type) {
		case *unix.SockaddrInet4:
			src = netip.AddrFrom4(a.Addr)
		case *unix.SockaddrInet6:
			src = netip.AddrFrom16(a.Addr)
		}
		if !p.dst.Is6() {
			// IPv4 raw sockets see the IP header; the kernel has not
			// checked the ICMP checksum yet.
			if n < 20 || msg[0]>>4 != 4 || int(msg[0]&0xf)*4 > n {
				continue
			}
			msg = msg[int(msg[0]&0xf)*4:]
		}
		if len(msg) < 8 || msg[0] != repType {
			continue
		}
		id, seq := binary.BigEndian.Uint16(msg[4:]), binary.BigEndian.Uint16(msg[6:])
		if id != p.id {
			res.Others++
			continue
		}
		if src != p.dst {
			if slicesContains(all, pinger{src, id}) {
				res.Others++
			} else {
				bad("reply id %#x seq %d from %v, pinged %v", id, seq, src, p.dst)
			}
			continue
		}
		mu.Lock()
		want, ok := sent[seq]
		dup := got[seq]
		if ok && !dup {
			got[seq] = true
		}
		mu.Unlock()
		switch {
		case !ok:
			bad("reply id %#x with a sequence never sent: %d", id, seq)
		case dup:
			bad("duplicate reply id %#x seq %d", id, seq)
		case msg[1] != 0:
			bad("reply id %#x seq %d: code %d", id, seq, msg[1])
		case !p.dst.Is6() && wirecheck.Checksum(msg) != 0:
			bad("reply id %#x seq %d: bad ICMP checksum %#04x", id, seq, binary.BigEndian.Uint16(msg[2:]))
		case !bytes.Equal(msg[8:], want):
			bad("reply id %#x seq %d: payload of %d bytes differs from the %d sent", id, seq, len(msg)-8, len(want))
		default:
			res.Received++
		}
	}
	<-doneSending
	res.Sent = nSent
	select {
	case err := <-sendErr:
		return res, err
	default:
	}
	return res, nil
}

func slicesContains(ps []pinger, p pinger) bool {
	for _, q := range ps {
		if q == p {
			return true
		}
	}
	return false
}

// pingCmd is the shell command line that runs the helper with spec.
func pingCmd(t *testing.T, count, size int, pingers ...pinger) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var ps []string
	for _, p := range pingers {
		ps = append(ps, fmt.Sprintf("%v/%#x", p.dst, p.id))
	}
	return fmt.Sprintf("env %s='%d %d %s' %s", pingEnv, count, size, strings.Join(ps, ","), self)
}

// parsePings returns the helper's results in out, by "DST/ID".
func parsePings(t *testing.T, out string) map[string]pingResult {
	t.Helper()
	res := map[string]pingResult{}
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, `{"dst"`) {
			continue
		}
		var r pingResult
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("bad ping output %q: %v", line, err)
		}
		res[fmt.Sprintf("%s/%#x", r.Dst, r.ID)] = r
	}
	return res
}

// checkPings fails t unless every pinger got all count replies right.
func checkPings(t *testing.T, out string, count int, pingers ...pinger) map[string]pingResult {
	t.Helper()
	res := parsePings(t, out)
	for _, p := range pingers {
		key := fmt.Sprintf("%v/%#x", p.dst, p.id)
		r, ok := res[key]
		switch {
		case !ok:
			t.Errorf("pinger %s: no result in output:\n%s", key, out)
		case r.Sent != count || r.Received != count || r.Bad != 0:
			t.Errorf("pinger %s: sent %d, %d right replies, %d wrong %q; want %d right", key, r.Sent, r.Received, r.Bad, r.Errors, count)
		}
	}
	return res
}

// pingRangeKey is the sysctl that lets groups open ping sockets.
const pingRangeKey = "net.ipv4.ping_group_range"

// setPingRange sets net.ipv4.ping_group_range in the sandbox host (where
// gopasst runs) to value and restores the previous value when t ends.
func setPingRange(t *testing.T, sb *sandbox.Sandbox, value string) {
	t.Helper()
	old, err := sb.Command(sb.HostNS, "sysctl", "-n", pingRangeKey).Output()
	if err != nil {
		t.Fatalf("read %s in %s: %v", pingRangeKey, sb.HostNS, err)
	}
	set := func(v string) error {
		out, err := sb.Command(sb.HostNS, "sysctl", "-q", "-w", pingRangeKey+"="+v).CombinedOutput()
		if err != nil {
			return fmt.Errorf("set %s=%q in %s: %v: %s", pingRangeKey, v, sb.HostNS, err, out)
		}
		return nil
	}
	if err := set(value); err != nil {
		t.Fatal(err)
	}
	prev := strings.Join(strings.Fields(string(old)), " ")
	t.Cleanup(func() {
		if err := set(prev); err != nil {
			t.Error(err)
		}
	})
}

// openPingSockets lets every group of the sandbox host open ping sockets.
func openPingSockets(t *testing.T, sb *sandbox.Sandbox) {
	t.Helper()
	setPingRange(t, sb, "0 2147483647")
}

// lastDump returns the counters of the last dump in out (see
// watch.ParseDump): the block of "name: N" lines that ends with the
// goroutines line.
func lastDump(out string) map[string]int64 {
	lines := strings.Split(out, "\n")
	end := -1
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], watch.DumpEnd) {
			end = i
			break
		}
	}
	if end < 0 {
		return map[string]int64{}
	}
	start := end
	for start > 0 && dumpLine.MatchString(lines[start-1]) {
		start--
	}
	return watch.ParseDump(strings.Join(lines[start:end+1], "\n"))
}

var dumpLine = regexp.MustCompile(`^[a-z0-9][a-z0-9 ()/-]*: -?[0-9]+$`)

// Counter names of ICMP echo.
const (
	cICMPToHost   = "icmp echo requests to host"
	cICMPToTap    = "icmp echo replies to tap"
	cICMPCreated  = "icmp flows created"
	cICMPExpired  = "icmp flows expired"
	cICMPActive   = "icmp flows active"
	cDropChecksum = "drop checksum"
	cDropICMPType = "drop icmp-type"
	cDropNoSocket = "drop no-ping-socket"
	cDropUnsupp   = "drop unsupported"
)

// wantCounters fails t for every counter of c that differs from want
// (absent counters too).
func wantCounters(t *testing.T, c map[string]int64, want map[string]int64) {
	t.Helper()
	for k, v := range want {
		if got, ok := c[k]; !ok || got != v {
			t.Errorf("counter %q = %d (present %v), want %d", k, got, ok, v)
		}
	}
}

// iputilsPing matches the summary line of iputils ping.
var iputilsPing = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

// pingSummaries returns (transmitted, received) of every iputils ping
// summary in out.
func pingSummaries(out string) [][2]int {
	var s [][2]int
	for _, m := range iputilsPing.FindAllStringSubmatch(out, -1) {
		tx, _ := strconv.Atoi(m[1])
		rx, _ := strconv.Atoi(m[2])
		s = append(s, [2]int{tx, rx})
	}
	return s
}

// TestPingPasta pings the gateway (the host's loopback answers) and the
// world namespace's address from the namespace, with iputils ping and
// with the helper (1000-byte random payloads, checked byte-exact), and
// checks the counters of the exit dump.
func TestPingPasta(t *testing.T) {
	sb := sandbox.New(t)
	openPingSockets(t, sb)
	v, _ := exec.Command("ping", "-V").CombinedOutput()
	iputils := strings.Contains(string(v), "iputils")
	if !iputils {
		t.Log("no iputils ping (install iputils-ping): only the helper pings")
	}
	for i, f := range families {
		t.Run(f.name, func(t *testing.T) {
			flag := "-4"
			if f.gw.Is6() {
				flag = "-6"
			}
			gwP, remoteP := pinger{f.gw, uint16(0x5a00 + i)}, pinger{f.remote, uint16(0x6b00 + i)}
			script := pingCmd(t, 3, 1000, gwP, remoteP) + "; true"
			if iputils {
				script = fmt.Sprintf("ping %[1]s -c 3 -i 0.2 -W 2 %[2]s; ping %[1]s -c 3 -i 0.2 -W 2 %[3]s; %[4]s",
					flag, f.gw, f.remote, script)
			}
			p := pasta(t, sb, []string{"-d"}, "sh", "-c", script)
			wait(t, p, 0)
			out := p.Stdout()
			checkPings(t, out, 3, gwP, remoteP)
			// One flow per destination for the helper, and as many
			// for iputils ping (one identifier per run).
			want := map[string]int64{cICMPToHost: 6, cICMPToTap: 6, cICMPCreated: 2, cICMPExpired: 0}
			if iputils {
				sums := pingSummaries(out)
				if len(sums) != 2 || sums[0] != [2]int{3, 3} || sums[1] != [2]int{3, 3} {
					t.Errorf("iputils ping to %v and %v: summaries %v, want 3 of 3 twice", f.gw, f.remote, sums)
				}
				for _, a := range []netip.Addr{f.gw, f.remote} {
					if n := strings.Count(out, " bytes from "+a.String()+":"); n != 3 {
						t.Errorf("iputils ping: %d replies from %v, want 3", n, a)
					}
				}
				want = map[string]int64{cICMPToHost: 12, cICMPToTap: 12, cICMPCreated: 4, cICMPExpired: 0}
			}
			wantCounters(t, lastDump(p.Stderr()), want)
			if t.Failed() {
				t.Logf("namespace output:\n%s\ngopasst stderr:\n%s", out, p.Stderr())
			}
		})
	}
}

// TestPingConcurrent runs pingers at once from the namespace: two with
// different identifiers to the same destination, and two with the same
// identifier to different destinations (flows are keyed by addresses and
// identifier). Every raw socket sees every reply: each must find all of
// its own, right, and the other's too (so they did overlap).
func TestPingConcurrent(t *testing.T) {
	sb := sandbox.New(t)
	openPingSockets(t, sb)
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			const count = 20
			sameDst := []pinger{{f.gw, 0x1234}, {f.gw, 0xbeef}}
			sameID := []pinger{{f.gw, 0x4242}, {f.remote, 0x4242}}
			p := pasta(t, sb, []string{"-d"}, "sh", "-c",
				pingCmd(t, count, 1000, sameDst...)+"; "+pingCmd(t, count, 1000, sameID...)+"; true")
			wait(t, p, 0)
			res := checkPings(t, p.Stdout(), count, append(sameDst, sameID...)...)
			for k, r := range res {
				if r.Others < count {
					t.Errorf("pinger %s saw %d replies of the other pinger, want %d", k, r.Others, count)
				}
			}
			wantCounters(t, lastDump(p.Stderr()), map[string]int64{cICMPToHost: 4 * count, cICMPToTap: 4 * count, cICMPCreated: 4})
			if t.Failed() {
				t.Logf("namespace output:\n%s\ngopasst stderr:\n%s", p.Stdout(), p.Stderr())
			}
		})
	}
}

// echoRequest builds the layers of an ICMP echo request from the fake
// guest's address of dst's family to dst (ICMPv4, or ICMPv6 with
// ICMPv6Echo), checksums computed by gopacket when serialized.
func (g *fakeGuest) echoRequest(dst netip.Addr, id, seq uint16, payload []byte) []gopacket.SerializableLayer {
	if dst.Is4() {
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: g.ip4.AsSlice(), DstIP: dst.AsSlice()}
		icmp := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: id, Seq: seq}
		return []gopacket.SerializableLayer{g.eth(layers.EthernetTypeIPv4, gwMAC), ip, icmp, gopacket.Payload(payload)}
	}
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolICMPv6, SrcIP: g.ip6.AsSlice(), DstIP: dst.AsSlice()}
	icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeEchoRequest, 0)}
	_ = icmp.SetNetworkLayerForChecksum(ip)
	return []gopacket.SerializableLayer{g.eth(layers.EthernetTypeIPv6, gwMAC), ip, icmp,
		&layers.ICMPv6Echo{Identifier: id, SeqNumber: seq}, gopacket.Payload(payload)}
}

// echoReply returns the identifier, sequence and payload of an ICMP or
// ICMPv6 echo reply, and whether p is one.
func echoReply(p gopacket.Packet) (id, seq uint16, payload []byte, ok bool) {
	if l, isV4 := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4); isV4 {
		if l.TypeCode.Type() != layers.ICMPv4TypeEchoReply {
			return 0, 0, nil, false
		}
		return l.Id, l.Seq, l.Payload, true
	}
	l, isV6 := p.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6)
	if !isV6 || l.TypeCode.Type() != layers.ICMPv6TypeEchoReply {
		return 0, 0, nil, false
	}
	e, isEcho := p.Layer(layers.LayerTypeICMPv6Echo).(*layers.ICMPv6Echo)
	if !isEcho {
		return 0, 0, nil, false
	}
	return e.Identifier, e.SeqNumber, e.Payload, true
}

// icmpChecksumsOK recomputes with gopacket the checksums of an echo reply:
// the IPv4 header's and ICMP's, or ICMPv6's (with its pseudo-header).
func icmpChecksumsOK(t *testing.T, p gopacket.Packet) error {
	t.Helper()
	opts := gopacket.SerializeOptions{ComputeChecksums: true}
	if l, ok := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4); ok {
		ip := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		ipc := *ip
		ipc.Options, ipc.Padding = append([]layers.IPv4Option(nil), ip.Options...), nil
		if err := ipc.SerializeTo(gopacket.NewSerializeBuffer(), opts); err != nil {
			t.Fatal(err)
		}
		if ipc.Checksum != ip.Checksum {
			return fmt.Errorf("IPv4 header checksum %#04x, want %#04x", ip.Checksum, ipc.Checksum)
		}
		c := *l
		if err := gopacket.SerializeLayers(gopacket.NewSerializeBuffer(), opts, &c, gopacket.Payload(l.Payload)); err != nil {
			t.Fatal(err)
		}
		if c.Checksum != l.Checksum {
			return fmt.Errorf("ICMP checksum %#04x, want %#04x", l.Checksum, c.Checksum)
		}
		return nil
	}
	l := p.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6)
	c := *l
	_ = c.SetNetworkLayerForChecksum(p.NetworkLayer())
	if err := gopacket.SerializeLayers(gopacket.NewSerializeBuffer(), opts, &c, gopacket.Payload(l.Payload)); err != nil {
		t.Fatal(err)
	}
	if c.Checksum != l.Checksum {
		return fmt.Errorf("ICMPv6 checksum %#04x, want %#04x", l.Checksum, c.Checksum)
	}
	return nil
}

// pingGuest sends count echo requests from the fake guest to dst and
// checks each reply: same identifier, sequence and payload, from dst to
// the guest's address and MAC, valid checksums.
func (g *fakeGuest) pingGuest(dst netip.Addr, id uint16, count, size int) {
	g.t.Helper()
	src := g.ip4
	if dst.Is6() {
		src = g.ip6
	}
	for i := 0; i < count; i++ {
		seq := uint16(pingSeqStart + i)
		payload := pingPayload(dst, id, seq, size)
		g.send(g.echoRequest(dst, id, seq, payload)...)
		pkt := g.expect(fmt.Sprintf("echo reply id %#x seq %d from %v", id, seq, dst), func(p gopacket.Packet) bool {
			rid, rseq, _, ok := echoReply(p)
			return ok && rid == id && rseq == seq
		})
		_, _, got, _ := echoReply(pkt)
		if !bytes.Equal(got, payload) {
			g.t.Errorf("echo reply id %#x seq %d from %v: payload of %d bytes differs from the %d sent", id, seq, dst, len(got), len(payload))
		}
		if s, d := addrs(pkt); s != dst || d != src {
			g.t.Errorf("echo reply id %#x seq %d: %v -> %v, want %v -> %v", id, seq, s, d, dst, src)
		}
		if eth := pkt.Layer(layers.LayerTypeEthernet).(*layers.Ethernet); !bytes.Equal(eth.DstMAC, g.mac) {
			g.t.Errorf("echo reply to MAC %v, want the guest's %v", eth.DstMAC, g.mac)
		}
		if err := icmpChecksumsOK(g.t, pkt); err != nil {
			g.t.Errorf("echo reply id %#x seq %d from %v: %v", id, seq, dst, err)
		}
		if ic, ok := pkt.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4); ok && ic.TypeCode.Code() != 0 {
			g.t.Errorf("echo reply code %d", ic.TypeCode.Code())
		}
		if ic, ok := pkt.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6); ok && ic.TypeCode.Code() != 0 {
			g.t.Errorf("echo reply code %d", ic.TypeCode.Code())
		}
	}
}

// expectNoEcho reads frames for d and fails t if an echo reply arrives.
func (g *fakeGuest) expectNoEcho(d time.Duration) {
	g.t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		f, err := g.readFrame(time.Until(deadline))
		if err != nil {
			return
		}
		pkt := gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.Default)
		if id, seq, _, ok := echoReply(pkt); ok {
			s, _ := addrs(pkt)
			g.t.Errorf("unexpected echo reply id %#x seq %d from %v", id, seq, s)
		}
	}
}

// sumDrops adds up the "drop REASON" counters.
func sumDrops(c map[string]int64) int64 {
	var n int64
	for k, v := range c {
		if strings.HasPrefix(k, "drop ") {
			n += v
		}
	}
	return n
}

// counters dumps p's counters with SIGUSR1. gopasst must have answered
// something first: it listens on its socket before it handles SIGUSR1.
func counters(t *testing.T, p *sandbox.Proc) map[string]int64 {
	t.Helper()
	c, err := watch.Counters(p)
	if err != nil {
		t.Fatalf("%v\ngopasst stderr:\n%s", err, p.Stderr())
	}
	return c
}

// waitEngine waits until gopasst's engine runs (and so handles SIGUSR1):
// until it answers an ARP request for the gateway.
func (g *fakeGuest) waitEngine() {
	g.t.Helper()
	g.send(g.eth(layers.EthernetTypeARP, bcastMAC), &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4,
		HwAddressSize: 6, ProtAddressSize: 4, Operation: layers.ARPRequest, SourceHwAddress: g.mac,
		SourceProtAddress: g.ip4.AsSlice(), DstHwAddress: make([]byte, 6), DstProtAddress: sandbox.GatewayAddr4.AsSlice()})
	g.expect("ARP reply for the gateway", func(p gopacket.Packet) bool {
		a, ok := p.Layer(layers.LayerTypeARP).(*layers.ARP)
		return ok && a.Operation == layers.ARPReply && net.IP(a.SourceProtAddress).Equal(sandbox.GatewayAddr4.AsSlice())
	})
}

// TestPingPasst pings from a fake guest of passt mode: the gateway (the
// host's loopback answers) and the world namespace's address, both
// families, then sends what must not be answered: a wrong checksum,
// truncated requests, echo replies and other types. gopasst must drop
// and count them, and go on answering.
func TestPingPasst(t *testing.T) {
	sb := sandbox.New(t)
	openPingSockets(t, sb)
	p, sock := passt(t, sb)
	g := connectGuest(t, sock)
	g.waitEngine()

	before := counters(t, p)
	for i, f := range families {
		g.pingGuest(f.gw, uint16(0x7100+i), 3, 1000)
		g.pingGuest(f.remote, uint16(0x7200+i), 3, 1000)
		g.pingGuest(f.gw, uint16(0x7300+i), 1, 0)     // no payload at all
		g.pingGuest(f.gw, 0, 1, 65000)                // identifier 0, a large payload
		g.pingGuest(f.remote, uint16(0x7500+i), 1, 1) // odd length
	}
	c := counters(t, p)
	wantCounters(t, c, map[string]int64{
		cICMPToHost:  before[cICMPToHost] + 18,
		cICMPToTap:   before[cICMPToTap] + 18,
		cICMPCreated: before[cICMPCreated] + 10,
		cICMPActive:  10,
	})

	// Bad input, each on its own identifier (never answered), both
	// families.
	type badFrame struct {
		what   string
		reason string // counter that must move by one; "" if unspecified
		frame  []byte
	}
	var bads []badFrame
	for i, f := range families {
		id := uint16(0x6600 + 16*i)
		payload := randomPayload(64)
		// Wrong checksum: a valid request with one bit of its checksum
		// flipped.
		fr := frame(t, g.echoRequest(f.gw, id, 1, payload)...)
		l3 := 14 + 20
		if f.gw.Is6() {
			l3 = 14 + 40
		}
		fr[l3+2] ^= 0x01
		bads = append(bads, badFrame{f.name + " wrong checksum", cDropChecksum, fr})
		// Truncated: an echo request cut after 4 bytes (type, code,
		// checksum; no identifier and sequence), IP lengths and the
		// checksum consistent with the cut.
		trunc := []byte{8, 0, 0, 0}
		if f.gw.Is6() {
			trunc[0] = 128
		}
		bads = append(bads, badFrame{f.name + " truncated", "", rawICMP(t, g, f.gw, trunc)})
		// Echo replies from the guest, and a type nothing handles.
		reply, other := byte(0), byte(13) // ICMP timestamp request
		if f.gw.Is6() {
			reply, other = 129, 200 // ICMPv6 private experimentation
		}
		for j, typ := range []byte{reply, other} {
			msg := append([]byte{typ, 0, 0, 0, byte(id >> 8), byte(id + 2 + uint16(j)), 0, 1}, payload...)
			bads = append(bads, badFrame{fmt.Sprintf("%s type %d", f.name, typ), cDropICMPType, rawICMP(t, g, f.gw, msg)})
		}
		// A request to a multicast group (all hosts) must not leave
		// the host.
		group, groupMAC := netip.MustParseAddr("224.0.0.1"), net.HardwareAddr{0x01, 0x00, 0x5e, 0, 0, 1}
		if f.gw.Is6() {
			group, groupMAC = netip.MustParseAddr("ff02::1"), net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}
		}
		ls := g.echoRequest(group, id+4, 1, payload)
		ls[0].(*layers.Ethernet).DstMAC = groupMAC
		bads = append(bads, badFrame{f.name + " to " + group.String(), "drop multicast", frame(t, ls...)})
		// The other family's echo request (checksum without a
		// pseudo-header): ICMPv6 in IPv4, ICMP in IPv6.
		cross := append([]byte{128, 0, 0, 0, byte(id >> 8), byte(id + 5), 0, 1}, payload...)
		var crossIP gopacket.SerializableLayer = &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv6, SrcIP: g.ip4.AsSlice(), DstIP: f.gw.AsSlice()}
		et := layers.EthernetTypeIPv4
		if f.gw.Is6() {
			cross[0] = 8
			crossIP = &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolICMPv4, SrcIP: g.ip6.AsSlice(), DstIP: f.gw.AsSlice()}
			et = layers.EthernetTypeIPv6
		}
		binary.BigEndian.PutUint16(cross[2:], wirecheck.Checksum(cross))
		bads = append(bads, badFrame{f.name + " carrying the other family's ICMP", cDropUnsupp,
			frame(t, g.eth(et, gwMAC), crossIP, gopacket.Payload(cross))})
	}
	for _, b := range bads {
		before := counters(t, p)
		g.write(framed(b.frame))
		g.expectNoEcho(300 * time.Millisecond)
		c := counters(t, p)
		if b.reason != "" && c[b.reason] != before[b.reason]+1 {
			t.Errorf("%s: %q went from %d to %d, want one more", b.what, b.reason, before[b.reason], c[b.reason])
		}
		if d := sumDrops(c) - sumDrops(before); d != 1 {
			t.Errorf("%s: drops went up by %d, want 1", b.what, d)
		}
		if c[cICMPToHost] != before[cICMPToHost] {
			t.Errorf("%s: sent to the host (%q %d -> %d)", b.what, cICMPToHost, before[cICMPToHost], c[cICMPToHost])
		}
	}
	// Still answering.
	for i, f := range families {
		g.pingGuest(f.gw, uint16(0x7400+i), 2, 100)
	}
	select {
	case <-p.Done():
		t.Fatalf("gopasst exited:\n%s", p.Stderr())
	default:
	}
	if t.Failed() {
		t.Logf("gopasst stderr:\n%s", p.Stderr())
	}
}

// rawICMP frames msg, an ICMP or ICMPv6 message whose checksum gets
// computed here, from the guest to dst.
func rawICMP(t *testing.T, g *fakeGuest, dst netip.Addr, msg []byte) []byte {
	t.Helper()
	msg = bytes.Clone(msg)
	binary.BigEndian.PutUint16(msg[2:], 0)
	if dst.Is4() {
		binary.BigEndian.PutUint16(msg[2:], wirecheck.Checksum(msg))
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: g.ip4.AsSlice(), DstIP: dst.AsSlice()}
		return frame(t, g.eth(layers.EthernetTypeIPv4, gwMAC), ip, gopacket.Payload(msg))
	}
	src := g.ip6.As16()
	d := dst.As16()
	pseudo := append(append(append([]byte{}, src[:]...), d[:]...), 0, 0, byte(len(msg)>>8), byte(len(msg)), 0, 0, 0, 58)
	binary.BigEndian.PutUint16(msg[2:], wirecheck.Checksum(append(pseudo, msg...)))
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolICMPv6, SrcIP: g.ip6.AsSlice(), DstIP: dst.AsSlice()}
	return frame(t, g.eth(layers.EthernetTypeIPv6, gwMAC), ip, gopacket.Payload(msg))
}

// TestPingFragmented pings with requests larger than the namespace's
// MTU (1500): its kernel fragments them, gopasst reassembles them, and the
// replies, as large, must reach the namespace byte-exact (IPv4 replies
// are fragmented to the MTU by gopasst; IPv6 ones, which only their
// sender may fragment, are written whole, and the tap device takes them).
func TestPingFragmented(t *testing.T) {
	sb := sandbox.New(t)
	openPingSockets(t, sb)
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			ps := []pinger{{f.gw, 0x3300}, {f.remote, 0x3301}}
			p := pasta(t, sb, []string{"-d", "-m", "1500"}, "sh", "-c", pingCmd(t, 3, 4000, ps...)+"; true")
			wait(t, p, 0)
			checkPings(t, p.Stdout(), 3, ps...)
			c := lastDump(p.Stderr())
			wantCounters(t, c, map[string]int64{cICMPToHost: 6, cICMPToTap: 6, "ip datagrams reassembled": 6})
			if t.Failed() {
				t.Logf("namespace output:\n%s\ngopasst stderr:\n%s", p.Stdout(), p.Stderr())
			}
		})
	}
}

// TestPingMapHostLoopback pings --map-host-loopback's address from a fake
// guest: the host's loopback answers, and the reply comes from the
// address pinged (nothing else in the sandbox has it).
func TestPingMapHostLoopback(t *testing.T) {
	sb := sandbox.New(t)
	openPingSockets(t, sb)
	map4, map6 := netip.MustParseAddr("192.0.2.99"), netip.MustParseAddr("2001:db8::99")
	_, sock := passt(t, sb, "--map-host-loopback", map4.String(), "--map-host-loopback", map6.String())
	g := connectGuest(t, sock)
	g.pingGuest(map4, 0x8100, 2, 1000)
	g.pingGuest(map6, 0x8101, 2, 1000)
}

// TestPingNoICMP checks --no-icmp: echo requests get no reply and are
// counted as unsupported, from a fake guest (exactly) and from a
// namespace (IPv4 only, as --no-icmp implies --no-ndp; at least: the
// namespace's own ICMPv6 is dropped as unsupported too).
func TestPingNoICMP(t *testing.T) {
	sb := sandbox.New(t)
	openPingSockets(t, sb)
	t.Run("passt", func(t *testing.T) {
		p, sock := passt(t, sb, "--no-icmp")
		g := connectGuest(t, sock)
		g.waitEngine()
		before := counters(t, p)
		for i, f := range families {
			g.send(g.echoRequest(f.gw, uint16(0x9100+i), 1, randomPayload(100))...)
		}
		g.expectNoEcho(time.Second)
		c := counters(t, p)
		wantCounters(t, c, map[string]int64{cDropUnsupp: before[cDropUnsupp] + 2, cICMPToHost: 0, cICMPCreated: 0})
		if t.Failed() {
			t.Logf("gopasst stderr:\n%s", p.Stderr())
		}
	})
	t.Run("pasta", func(t *testing.T) {
		pg := pinger{sandbox.GatewayAddr4, 0x9200}
		p := pasta(t, sb, []string{"-d", "--no-icmp"}, "sh", "-c", pingCmd(t, 2, 100, pg)+"; true")
		wait(t, p, 0)
		if r := parsePings(t, p.Stdout())[fmt.Sprintf("%v/%#x", pg.dst, pg.id)]; r.Sent != 2 || r.Received != 0 || r.Bad != 0 {
			t.Errorf("ping with --no-icmp: %+v, want 2 sent and no reply\n%s", r, p.Stdout())
		}
		c := lastDump(p.Stderr())
		if c[cDropUnsupp] < 2 || c[cICMPToHost] != 0 {
			t.Errorf("counters: %q %d (want 2 or more), %q %d (want 0)", cDropUnsupp, c[cDropUnsupp], cICMPToHost, c[cICMPToHost])
		}
	})
}

// TestPingNoPingSocket closes net.ipv4.ping_group_range ("1 0") where
// gopasst runs: one warning at start, echo requests dropped and counted
// as no-ping-socket, and UDP unaffected in the same run.
func TestPingNoPingSocket(t *testing.T) {
	sb := sandbox.New(t)
	setPingRange(t, sb, "1 0")
	echo := sb.Start(t, sb.HostNS, udptool, "echo", "-l", "127.0.0.1:5810", "-timeout", "20s")
	echo.WaitLine(t, "ready", 20*time.Second)
	const count = 3
	pingers := []pinger{{sandbox.GatewayAddr4, 0xa100}, {sandbox.GatewayAddr6, 0xa101}}
	script := fmt.Sprintf("%s; %s send -to 192.0.2.1:5810 -count 3 -size 100 -echo -connect; echo finished; sleep 20",
		pingCmd(t, count, 100, pingers...), udptool)
	p := pasta(t, sb, nil, "sh", "-c", script)
	p.WaitLine(t, "finished", 15*time.Second)
	c := counters(t, p)
	res := parsePings(t, p.Stdout())
	for _, pg := range pingers {
		r := res[fmt.Sprintf("%v/%#x", pg.dst, pg.id)]
		if r.Sent != count || r.Received != 0 || r.Bad != 0 {
			t.Errorf("pinger %v: %+v, want %d sent and no reply", pg.dst, r, count)
		}
	}
	if r := parseSend(t, p.Stdout()); r.Received != 3 || r.Bad != 0 {
		t.Errorf("UDP in the same run: %+v, want 3 echoes", r)
	}
	wantCounters(t, c, map[string]int64{cDropNoSocket: 2 * count, cICMPToHost: 0, cICMPToTap: 0})
	var warnings []string
	for _, line := range strings.Split(p.Stderr(), "\n") {
		if strings.Contains(strings.ToLower(line), "ping") && !dumpLine.MatchString(line) {
			warnings = append(warnings, line)
		}
	}
	if len(warnings) != 1 {
		t.Errorf("want one warning about ping sockets on stderr, got %d: %q", len(warnings), warnings)
	}
	if t.Failed() {
		t.Logf("namespace output:\n%s\ngopasst stderr:\n%s", p.Stdout(), p.Stderr())
	}
}
