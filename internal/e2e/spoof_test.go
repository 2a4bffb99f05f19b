package e2e_test

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
)

// spoofEnv, set to an interface name, turns the test binary into an
// injector of UDP frames from sources a guest cannot have, to the
// gateway's ports 5410 (IPv4) and 5411 (IPv6).
const spoofEnv = "GOPASST_E2E_SPOOF"

// spoofed lists the bad sources: loopback, unspecified, "this network",
// multicast, broadcast, the gateway itself, and port 0 from the guest's
// own address.
var spoofed = []struct {
	src  string
	port uint16
}{
	{"127.0.0.1", 4000}, {"0.0.0.0", 4000}, {"0.1.2.3", 4000}, {"224.0.0.1", 4000},
	{"255.255.255.255", 4000}, {sandbox.GatewayAddr4.String(), 4000}, {sandbox.HostAddr4.String(), 0},
	{"::1", 4000}, {"::", 4000}, {"ff02::1", 4000}, {sandbox.GatewayAddr6.String(), 4000}, {sandbox.HostAddr6.String(), 0},
}

func spoofFrame(src net.HardwareAddr, from string, sport uint16) []byte {
	a := net.ParseIP(from)
	udp := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: 5410}
	eth := &layers.Ethernet{SrcMAC: src, DstMAC: ourMAC, EthernetType: layers.EthernetTypeIPv4}
	var ip gopacket.SerializableLayer
	if a.To4() != nil {
		ip4 := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: a.To4(), DstIP: sandbox.GatewayAddr4.AsSlice()}
		_ = udp.SetNetworkLayerForChecksum(ip4)
		ip = ip4
	} else {
		udp.DstPort = 5411
		eth.EthernetType = layers.EthernetTypeIPv6
		ip6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolUDP, SrcIP: a, DstIP: sandbox.GatewayAddr6.AsSlice()}
		_ = udp.SetNetworkLayerForChecksum(ip6)
		ip = ip6
	}
	buf := gopacket.NewSerializeBuffer()
	_ = gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip, udp, gopacket.Payload([]byte("spoofed")))
	return buf.Bytes()
}

func spoofMain() int {
	return sendRaw(os.Getenv(spoofEnv), func(mac net.HardwareAddr) [][]byte {
		var frames [][]byte
		for _, s := range spoofed {
			frames = append(frames, spoofFrame(mac, s.src, s.port))
		}
		return frames
	})
}

// TestSpoofedSources injects UDP frames from sources a guest cannot have
// (loopback, unspecified, 0.0.0.0/8, multicast, broadcast, its gateway,
// and source port 0): none may reach the host, each is counted as
// "drop bad-source", and a real datagram from the namespace afterwards
// still gets through, with its echo, so the guest's address was not
// learnt from a spoofed frame.
func TestSpoofedSources(t *testing.T) {
	sb := sandbox.New(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	echo4 := sb.Start(t, sb.HostNS, udptool, "echo", "-l", "127.0.0.1:5410", "-timeout", "3s")
	echo6 := sb.Start(t, sb.HostNS, udptool, "echo", "-l", "[::1]:5411", "-timeout", "3s")
	echo4.WaitLine(t, "ready", 20*time.Second)
	echo6.WaitLine(t, "ready", 20*time.Second)
	script := fmt.Sprintf("%s=eth0 %s && %s send -to 192.0.2.1:5410 -count 2 -echo && %s send -to [2001:db8::1]:5411 -count 2 -echo",
		spoofEnv, self, udptool, udptool)
	p := pasta(t, sb, []string{"-d", "-u", "none"}, "sh", "-c", script)
	wait(t, p, 0)
	if line := fmt.Sprintf("drop bad-source: %d", len(spoofed)); !strings.Contains(p.Stderr(), line) {
		t.Errorf("counters lack %q:\n%s", line, p.Stderr())
	}
	for _, e := range []*sandbox.Proc{echo4, echo6} {
		if code, err := e.Wait(10 * time.Second); code != 0 || err != nil {
			t.Fatalf("echo: exit %d %v\n%s", code, err, e.Stderr())
		}
		var sum struct {
			Echoed int      `json:"echoed"`
			Peers  []string `json:"peers"`
		}
		out := strings.TrimSpace(e.Stdout())
		if err := json.Unmarshal([]byte(out[strings.LastIndex(out, "\n")+1:]), &sum); err != nil {
			t.Fatalf("echo summary: %v\n%s", err, out)
		}
		if sum.Echoed != 2 || len(sum.Peers) != 1 {
			t.Errorf("host got %d datagrams from %v, want the 2 real ones from one peer", sum.Echoed, sum.Peers)
		}
	}
}
