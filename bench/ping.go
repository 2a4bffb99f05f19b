package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// secPing is the section of the ping rows, after the TCP ones.
const secPing = secTCPConns + 1

// pingSize is the payload of every echo request, as ping(8)'s default.
const pingSize = 56

// pingPath is the way of the echo requests: from the namespace to its
// gateway, which both translators map to the host's loopback, through
// the tap. ICMP has no ports; the port is 0.
var pingPath = Path{Name: "tap-ns-host", Label: "tap ns→host", Via: "tap", Sender: InNS, Receiver: OnHost,
	To:     func(f Family) netip.AddrPort { return netip.AddrPortFrom(f.Gateway, 0) },
	Listen: func(f Family) netip.AddrPort { return netip.AddrPortFrom(f.Loopback, 0) }}

// pingScenarios returns the ping scenarios, IPv4 and IPv6, which the
// veth baseline runs too.
func pingScenarios() []Scenario {
	var out []Scenario
	for _, f := range families {
		out = append(out, Scenario{Name: fmt.Sprintf("ping/%s/%s", pingPath.Name, f.Name), Baseline: kernelVeth,
			Run: func(ctx context.Context, b *Bench, in *Instance, t *Trial) error {
				return b.ping(ctx, in, t, f)
			}})
	}
	return out
}

// pingRangeKey is the sysctl, per network namespace, that lets the
// processes of a range of groups open ping sockets (ICMPv6 ones too).
const pingRangeKey = "net.ipv4.ping_group_range"

// openPingRange lets the user's group open ping sockets in the
// sandbox's host namespace, where the translators run (as the user;
// a new namespace starts with "1 0", nobody), and returns the function
// that restores the previous range.
func (b *Bench) openPingRange() (func(), error) {
	old, err := b.sb.Command(b.sb.HostNS, "sysctl", "-n", pingRangeKey).Output()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", pingRangeKey, err)
	}
	set := func(v string) error {
		return run(b.sb.Command(b.sb.HostNS, "sysctl", "-q", "-w", pingRangeKey+"="+v))
	}
	g := strconv.Itoa(b.gid)
	if err := set(g + " " + g); err != nil {
		return nil, err
	}
	prev := strings.Join(strings.Fields(string(old)), " ")
	return func() {
		if err := set(prev); err != nil {
			fmt.Fprintln(b.log, "bench:", err)
		}
	}, nil
}

// ping measures echo round trips, one request outstanding, from the
// namespace to its gateway through the tap (to the host end of the veth
// pair for the baseline): mean and 99th percentile over -rr-dur, after
// 200 round trips of warm-up. The pinger, root in the namespace, uses an
// unprivileged ICMP socket: the namespace's ping_group_range is opened
// to root's group for it (the namespace is the trial's own). Besides the
// tap bytes, the path check wants the host namespace's ICMP counters to
// show every echo request that was answered: the reference of 2023 sends
// the requests on to the gateway address itself (the sandbox's world
// namespace), where they are answered instead.
func (b *Bench) ping(_ context.Context, in *Instance, t *Trial, f Family) error {
	p := in.route(pingPath)
	t.Via = p.Via
	if err := run(exec.Command("nsenter", "-t", strconv.Itoa(in.NSPid()), "-n", "--",
		"sh", "-c", "echo 0 0 > /proc/sys/net/ipv4/ping_group_range")); err != nil {
		return err
	}
	tap0, _ := in.TapBytes()
	echos0 := hostEchos(b.probe.pid(), f)
	pr, err := b.startLoad(p.Sender, in, "ping", "-to", p.To(f).String(), "-size", strconv.Itoa(pingSize), "-dur", b.opt.RRDur.String())
	if err != nil {
		return err
	}
	defer pr.Kill()
	res, err := pr.Final(b.opt.RRDur + time.Minute)
	if err != nil {
		return err
	}
	if err := t.ended(in, tap0, res.Bytes); err != nil {
		return err
	}
	t.checkVia(res.Bytes)
	// The host namespace must have answered every echo itself (on its
	// loopback, or the veth pair's end); a translator that sends the
	// requests on to the gateway has them answered elsewhere.
	if echos, replies := hostEchos(b.probe.pid(), f)-echos0, res.Bytes/pingSize; echos < replies {
		t.ViaOK = false
		t.note("the host namespace received %d echo requests for %d replies: answered elsewhere", echos, replies)
	}
	t.note("%d round trips in %.2f s, p50 %.0f µs", res.Dgrams, res.Secs, res.P50us)
	if res.Lost > 0 {
		t.note("%d requests unanswered within %v", res.Lost, rrTimeout)
	}
	if t.Bad = res.Bad; t.Bad > 0 {
		t.note("%d wrong replies (%s)", res.Bad, res.LastErr)
	} else if res.Errors > 0 {
		t.note("%d errors (%s)", res.Errors, res.LastErr)
	}
	if res.Dgrams == 0 {
		return fmt.Errorf("no echo reply (%d requests unanswered; %s)", res.Lost, res.LastErr)
	}
	label := fmt.Sprintf("%d B, %s, %s", pingSize, p.Label, f.Label)
	t.add(secPing, "Ping (ICMP echo) round-trip time mean, "+label, "µs ↓", res.MeanUs)
	t.add(secPing, "Ping (ICMP echo) round-trip time p99, "+label, "µs ↓", res.P99us)
	return nil
}

// hostEchos returns the echo requests that the network namespace of
// process pid has received, of family f: InEchos of /proc/PID/net/snmp
// (IPv4), Icmp6InEchos of /proc/PID/net/snmp6 (IPv6); 0 if unreadable.
func hostEchos(pid int, f Family) uint64 {
	if f.Gateway.Is6() {
		for _, l := range procLines(pid, "snmp6") {
			if len(l) == 2 && l[0] == "Icmp6InEchos" {
				n, _ := strconv.ParseUint(l[1], 10, 64)
				return n
			}
		}
		return 0
	}
	var names []string
	for _, l := range procLines(pid, "snmp") {
		if len(l) == 0 || l[0] != "Icmp:" {
			continue
		}
		if names == nil {
			names = l
			continue
		}
		if i := slices.Index(names, "InEchos"); i > 0 && i < len(l) {
			n, _ := strconv.ParseUint(l[i], 10, 64)
			return n
		}
	}
	return 0
}

// ICMP and ICMPv6 echo types.
const (
	icmpEcho, icmpEchoReply     = 8, 0
	icmpv6Echo, icmpv6EchoReply = 128, 129
)

// runPing sends echo requests of o.size bytes of payload to o.to's
// address, one at a time, from an unprivileged ICMP socket (SOCK_DGRAM,
// IPPROTO_ICMP or IPPROTO_ICMPV6, a "ping socket": the caller's group
// must be in net.ipv4.ping_group_range), for o.dur after a warm-up of
// rrWarmup round trips (at most rrWarmupMax), and reports the round
// trips (Dgrams, Secs, MeanUs, P50us, P99us of the measured part) and
// the payload bytes echoed (Bytes, warm-up included). The payload is the
// benchmark's pattern with a 64-bit sequence number; a reply counts if
// its type, code, identifier (the socket's, which the kernel writes into
// every request), sequence number and payload are those of the request.
// A reply to an earlier request (after its time-out) is skipped; any
// other reply counts in Bad. A request unanswered within rrTimeout counts
// in Lost.
func runPing(o loadOpts, c *control) (Counters, error) {
	dst := o.to.Addr().Unmap()
	family, proto, reqType, replyType := unix.AF_INET, unix.IPPROTO_ICMP, byte(icmpEcho), byte(icmpEchoReply)
	if dst.Is6() {
		family, proto, reqType, replyType = unix.AF_INET6, unix.IPPROTO_ICMPV6, icmpv6Echo, icmpv6EchoReply
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return Counters{}, fmt.Errorf("ping socket (is the group in %s?): %w", pingRangeKey, err)
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, sockaddr(netip.AddrPortFrom(dst, 0))); err != nil {
		return Counters{}, fmt.Errorf("connect %v: %w", dst, err)
	}
	// Connecting bound the socket to an identifier, its "port".
	var id uint16
	switch sa, err := unix.Getsockname(fd); s := sa.(type) {
	case *unix.SockaddrInet4:
		id = uint16(s.Port)
	case *unix.SockaddrInet6:
		id = uint16(s.Port)
	default:
		return Counters{}, fmt.Errorf("getsockname: %v %v", sa, err)
	}
	if err := setTimeouts(fd, rrTimeout, rrTimeout); err != nil {
		return Counters{}, err
	}
	req := make([]byte, 8+o.size)
	req[0] = reqType
	binary.BigEndian.PutUint16(req[4:], id)
	payload := req[8:]
	copy(payload, pattern(o.size))
	resp := make([]byte, maxDatagram)
	var st stats
	var lost, seq uint64
	final, err := timed(o, c, &st, func() { lost = 0 }, func() (bool, error) {
		seq++
		binary.BigEndian.PutUint16(req[6:], uint16(seq))
		binary.LittleEndian.PutUint64(payload[4:hdrLen], seq)
		if _, err := unix.Write(fd, req); err != nil {
			if !transient(err) {
				return false, fmt.Errorf("send: %w", err)
			}
			st.fail(err)
			time.Sleep(time.Millisecond)
			return false, nil
		}
		for {
			n, err := unix.Read(fd, resp)
			if err != nil {
				if errors.Is(err, unix.EINTR) {
					continue
				}
				if !errors.Is(err, unix.EAGAIN) {
					st.fail(err)
				}
				lost++
				return false, nil
			}
			r := resp[:n]
			if n == len(req) && r[0] == replyType && r[1] == 0 && binary.BigEndian.Uint16(r[4:]) == id &&
				binary.BigEndian.Uint16(r[6:]) != uint16(seq) && binary.LittleEndian.Uint64(r[8+4:8+hdrLen]) < seq &&
				bytes.Equal(r[8:8+4], payload[:4]) {
				continue // the answer to an earlier request, late
			}
			if n != len(req) || r[0] != replyType || r[1] != 0 || binary.BigEndian.Uint16(r[4:]) != id ||
				binary.BigEndian.Uint16(r[6:]) != uint16(seq) || !bytes.Equal(r[8:], payload) {
				st.bad.Add(1)
				st.fail(fmt.Errorf("reply %x to request %x", r[:min(n, 32)], req[:min(len(req), 32)]))
				continue
			}
			st.bytes.Add(uint64(o.size))
			return true, nil
		}
	})
	final.Lost = lost
	return final, err
}
