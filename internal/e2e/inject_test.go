package e2e_test

import (
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
)

// injectEnv, when set to an interface name, turns the test binary into a
// frame injector (see injectMain).
const injectEnv = "GOPASST_E2E_INJECT"

// malformed lists the frames the injector sends, built from a valid
// IPv4/UDP frame, with the drop reason gopasst must count for each.
var malformed = []struct {
	reason string
	mutate func(f []byte) []byte
}{
	{"short", func(f []byte) []byte { return f[:14+10] }},                              // IPv4 header cut
	{"bad-header", func(f []byte) []byte { f[14] = 0x55; return f }},                   // IP version 5
	{"short", func(f []byte) []byte { f[14+20+4], f[14+20+5] = 0xff, 0xff; return f }}, // UDP length past the end
	{"unsupported", func(f []byte) []byte { f[12], f[13] = 0x88, 0xb5; return f }},     // unknown EtherType
}

// injectMain writes the malformed frames to the interface named by
// injectEnv, then an IPv6 fragment.
func injectMain() int {
	return sendRaw(os.Getenv(injectEnv), func(mac net.HardwareAddr) [][]byte {
		var frames [][]byte
		for _, m := range malformed {
			frames = append(frames, m.mutate(validFrame(mac)))
		}
		return append(frames, fragment6(mac))
	})
}

// sendRaw writes the frames build makes for the interface's MAC address
// to interface ifname through a packet socket: the kernel hands them to
// the tap device unchanged, so gopasst reads exactly these bytes. It
// returns the probe's exit status.
func sendRaw(ifname string, build func(mac net.HardwareAddr) [][]byte) int {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		fmt.Fprintln(os.Stderr, "inject:", err)
		return 1
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, "inject:", err)
		return 1
	}
	defer unix.Close(fd)
	sa := &unix.SockaddrLinklayer{Ifindex: ifi.Index, Halen: 6}
	for _, f := range build(ifi.HardwareAddr) {
		if err := unix.Sendto(fd, f, 0, sa); err != nil {
			fmt.Fprintln(os.Stderr, "inject:", err)
			return 1
		}
	}
	time.Sleep(100 * time.Millisecond)
	return 0
}

var ourMAC = net.HardwareAddr{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55}

// validFrame is a well-formed IPv4/UDP frame to the gateway, built with
// gopacket.
func validFrame(src net.HardwareAddr) []byte {
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP,
		SrcIP: sandbox.HostAddr4.AsSlice(), DstIP: sandbox.GatewayAddr4.AsSlice()}
	udp := &layers.UDP{SrcPort: 40000, DstPort: 5400}
	_ = udp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	_ = gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		&layers.Ethernet{SrcMAC: src, DstMAC: ourMAC, EthernetType: layers.EthernetTypeIPv4}, ip, udp,
		gopacket.Payload(make([]byte, 64)))
	return append([]byte(nil), buf.Bytes()...)
}

func fragment6(src net.HardwareAddr) []byte {
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolIPv6Fragment,
		SrcIP: sandbox.HostAddr6.AsSlice(), DstIP: sandbox.GatewayAddr6.AsSlice()}
	frag := &layers.IPv6Fragment{NextHeader: layers.IPProtocolUDP, MoreFragments: true, Identification: 1}
	buf := gopacket.NewSerializeBuffer()
	_ = gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true},
		&layers.Ethernet{SrcMAC: src, DstMAC: ourMAC, EthernetType: layers.EthernetTypeIPv6}, ip, frag,
		gopacket.Payload(make([]byte, 64)))
	return append([]byte(nil), buf.Bytes()...)
}

// TestMalformedFrames injects broken frames into the tap and checks that
// gopasst counts each by reason and keeps forwarding.
func TestMalformedFrames(t *testing.T) {
	sb := sandbox.New(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	echo := sb.Start(t, sb.HostNS, udptool, "echo", "-l", "127.0.0.1:5400", "-timeout", "30s")
	echo.WaitLine(t, "ready", 20*time.Second)
	script := fmt.Sprintf("%s=eth0 %s && %s send -to 192.0.2.1:5400 -count 3 -echo -connect", injectEnv, self, udptool)
	p := pasta(t, sb, []string{"-d"}, "sh", "-c", script)
	wait(t, p, 0)
	if r := parseSend(t, p.Stdout()); r.Received != 3 {
		t.Fatalf("forwarding stopped after malformed frames: %+v", r)
	}
	// The IPv6 fragment is kept for reassembly, not malformed.
	if !strings.Contains(p.Stderr(), "ip fragments in: 1") {
		t.Errorf("the fragment was not taken for reassembly")
	}
	want := map[string]int{}
	for _, m := range malformed {
		want[m.reason]++
	}
	total := 0
	for reason, n := range want {
		total += n
		if line := fmt.Sprintf("malformed %s: %d", reason, n); !strings.Contains(p.Stderr(), line) {
			t.Errorf("counters lack %q", line)
		}
	}
	if line := fmt.Sprintf("drop malformed: %d", total); !strings.Contains(p.Stderr(), line) {
		t.Errorf("counters lack %q", line)
	}
	if t.Failed() {
		t.Logf("stderr:\n%s", p.Stderr())
	}
}
