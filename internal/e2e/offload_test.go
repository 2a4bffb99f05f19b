package e2e_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"strconv"
	"testing"
	"time"
	"unsafe"

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
	"github.com/gopasst/gopasst/internal/e2e/watch"
	"golang.org/x/sys/unix"
)

// gsoEnv turns the test binary into a UDP segmentation probe:
//
//	GOPASST_E2E_GSO=send self TO SEG PER LAST BATCHES
//	GOPASST_E2E_GSO=recv self LISTEN GRO SEG PER LAST TOTAL
//
// send writes BATCHES messages with UDP_SEGMENT, each PER datagrams of SEG
// bytes but the last, of LAST; recv (with UDP_GRO if GRO is 1) takes
// TOTAL datagrams, checks each one's length and bytes, and prints
// "got N coalesced M", M counting reads that returned more than one.
const gsoEnv = "GOPASST_E2E_GSO"

// gsoByte is byte j of datagram k; its first four bytes hold k.
func gsoByte(k, j int) byte { return byte(k*31 + j*7 + 1) }

func gsoDatagram(b []byte, k int) {
	for j := range b {
		b[j] = gsoByte(k, j)
	}
	binary.BigEndian.PutUint32(b, uint32(k))
}

func gsoMain() int {
	a := os.Args[1:]
	n := func(i int) int { v, _ := strconv.Atoi(a[i]); return v }
	var err error
	switch os.Getenv(gsoEnv) {
	case "send":
		err = gsoSend(a[0], n(1), n(2), n(3), n(4))
	case "recv":
		err = gsoRecv(a[0], a[1] == "1", n(2), n(3), n(4), n(5))
	default:
		err = errors.New("unknown mode")
	}
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	return 0
}

func gsoSend(to string, seg, per, last, batches int) error {
	c, err := net.Dial("udp", to)
	if err != nil {
		return err
	}
	defer c.Close()
	oob := make([]byte, unix.CmsgSpace(2))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = unix.IPPROTO_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(oob[unix.CmsgLen(0):], uint16(seg))
	buf := make([]byte, (per-1)*seg+last)
	for b := 0; b < batches; b++ {
		for i := 0; i < per; i++ {
			l := seg
			if i == per-1 {
				l = last
			}
			gsoDatagram(buf[i*seg:i*seg+l], b*per+i)
		}
		if _, _, err := c.(*net.UDPConn).WriteMsgUDP(buf, oob, nil); err != nil {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

func gsoRecv(listen string, gro bool, seg, per, last, total int) error {
	ua, err := net.ResolveUDPAddr("udp", listen)
	if err != nil {
		return err
	}
	c, err := net.ListenUDP("udp", ua)
	if err != nil {
		return err
	}
	defer c.Close()
	// Room for every datagram of the run even if this process does not
	// get the CPU while they arrive (a loaded test machine).
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	_ = rc.Control(func(fd uintptr) { _ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20) })
	if gro {
		var serr error
		if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO, 1) }); err != nil {
			return err
		}
		if serr != nil {
			return serr
		}
	}
	fmt.Println("ready")
	buf := make([]byte, 1<<16)
	oob := make([]byte, 64)
	seen := make(map[int]bool)
	coalesced := 0
	for len(seen) < total {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, oobn, _, _, err := c.ReadMsgUDP(buf, oob)
		if err != nil {
			return fmt.Errorf("after %d datagrams: %w", len(seen), err)
		}
		step := n
		if msgs, _ := unix.ParseSocketControlMessage(oob[:oobn]); len(msgs) > 0 {
			for _, m := range msgs {
				if m.Header.Level == unix.IPPROTO_UDP && m.Header.Type == unix.UDP_GRO && len(m.Data) >= 4 {
					step = int(binary.NativeEndian.Uint32(m.Data))
				}
			}
		}
		if step < n {
			coalesced++
		}
		for off := 0; off < n; off += step {
			d := buf[off:min(off+step, n)]
			if len(d) < 4 {
				return fmt.Errorf("datagram of %d bytes", len(d))
			}
			k := int(binary.BigEndian.Uint32(d))
			want := seg
			if k%per == per-1 {
				want = last
			}
			if k >= total || len(d) != want || seen[k] {
				return fmt.Errorf("datagram %d: %d bytes (want %d), seen before: %v", k, len(d), want, seen[k])
			}
			for j := 4; j < len(d); j++ {
				if d[j] != gsoByte(k, j) {
					return fmt.Errorf("datagram %d: byte %d is %#x, want %#x", k, j, d[j], gsoByte(k, j))
				}
			}
			seen[k] = true
		}
	}
	fmt.Printf("got %d coalesced %d\n", len(seen), coalesced)
	return nil
}

var gotRe = regexp.MustCompile(`got (\d+) coalesced (\d+)`)

// counter reads one of gopasst's counters from its -d output at exit.
func counter(t *testing.T, out, name string) int {
	t.Helper()
	v, ok := watch.ParseDump(out)[name]
	if !ok {
		t.Fatalf("no counter %q in:\n%s", name, out)
	}
	return int(v)
}

// TestSegmentationOffload sends batches of datagrams with UDP_SEGMENT
// (1372-byte segments, a 100-byte last one) through gopasst, from the
// namespace to the host and from the host to the namespace, over the tap
// and spliced, to receivers with and without UDP_GRO, IPv4 and IPv6, with
// offloads on and off. Every datagram must arrive once, whole, byte-exact.
// With offloads on, the tap must carry fewer frames than datagrams (the
// batches crossed segmented) and a GRO receiver must get batches whole;
// with --no-offload, one frame per datagram.
func TestSegmentationOffload(t *testing.T) {
	sb := sandbox.New(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	const seg, per, last, batches = 1372, 20, 100, 5
	const total = per * batches
	args := func(vals ...any) []string {
		var s []string
		for _, v := range vals {
			s = append(s, fmt.Sprint(v))
		}
		return s
	}
	port := 6100
	for _, f := range families {
		for _, path := range []string{"ns-to-host", "host-to-ns", "splice-ns-to-host", "splice-host-to-ns"} {
			for _, offload := range []bool{true, false} {
				for _, gro := range []bool{false, true} {
					name := fmt.Sprintf("%s/%s/offload=%v/gro=%v", f.name, path, offload, gro)
					port++
					t.Run(name, func(t *testing.T) {
						opts := []string{"-d"}
						if !offload {
							opts = append(opts, "--no-offload")
						}
						g := "0"
						if gro {
							g = "1"
						}
						var recv, p *sandbox.Proc
						switch path {
						case "ns-to-host", "splice-ns-to-host":
							recv = sb.Start(t, sb.HostNS, "env", append([]string{gsoEnv + "=recv", self, ap(f.loopback, uint16(port)), g},
								args(seg, per, last, total)...)...)
							recv.WaitLine(t, "ready", 20*time.Second)
							to := ap(f.gw, uint16(port))
							if path == "splice-ns-to-host" {
								to = ap(f.loopback, uint16(port))
								opts = append(opts, "-U", fmt.Sprint(port))
							}
							p = pasta(t, sb, opts, append([]string{"env", gsoEnv + "=send", self, to}, args(seg, per, last, batches)...)...)
							wait(t, p, 0)
							if code, err := recv.Wait(10 * time.Second); code != 0 || err != nil {
								t.Fatalf("receiver: exit %d %v\n%s%s", code, err, recv.Stdout(), recv.Stderr())
							}
						default:
							opts = append(opts, "-u", fmt.Sprint(port))
							p = pasta(t, sb, opts, append([]string{"env", gsoEnv + "=recv", self, ap(f.anyAddr, uint16(port)), g},
								args(seg, per, last, total)...)...)
							p.WaitLine(t, "ready", 20*time.Second)
							to := ap(f.host, uint16(port))
							if path == "splice-host-to-ns" {
								to = ap(f.loopback, uint16(port))
							}
							send := sb.Start(t, sb.HostNS, "env", append([]string{gsoEnv + "=send", self, to}, args(seg, per, last, batches)...)...)
							if code, err := send.Wait(10 * time.Second); code != 0 || err != nil {
								t.Fatalf("sender: exit %d %v\n%s%s", code, err, send.Stdout(), send.Stderr())
							}
							wait(t, p, 0)
							recv = p
						}
						m := gotRe.FindStringSubmatch(recv.Stdout())
						if m == nil || m[1] != fmt.Sprint(total) {
							t.Fatalf("receiver did not get all %d datagrams:\n%s", total, recv.Stdout())
						}
						out := p.Stderr()
						switch path {
						case "ns-to-host":
							in, dg := counter(t, out, "tap frames in"), counter(t, out, "udp datagrams to host")
							if dg != total || (offload && in >= total) || (!offload && in < total) {
								t.Fatalf("offload=%v: %d tap frames in for %d datagrams to host", offload, in, dg)
							}
						case "host-to-ns":
							fo, dg := counter(t, out, "tap frames out"), counter(t, out, "udp datagrams to tap")
							if dg != total || (offload && fo >= total) || (!offload && fo < total) {
								t.Fatalf("offload=%v: %d tap frames out for %d datagrams to tap", offload, fo, dg)
							}
						default:
							if dg := counter(t, out, "udp datagrams socket to socket"); dg != total {
								t.Fatalf("%d datagrams spliced, want %d", dg, total)
							}
						}
						if co, _ := strconv.Atoi(m[2]); gro && offload && co == 0 {
							t.Fatalf("GRO receiver got no batch whole: %s", recv.Stdout())
						}
					})
				}
			}
		}
	}
}
