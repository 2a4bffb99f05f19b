package e2e_test

import (
	"bytes"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
)

// TestPcap captures a namespace's UDP exchange with -p and reads the file
// back with an independent reader: the datagrams both ways are in it.
func TestPcap(t *testing.T) {
	sb := sandbox.New(t)
	echo := sb.Start(t, sb.HostNS, udptool, "echo", "-l", "127.0.0.1:5900", "-timeout", "20s")
	echo.WaitLine(t, "ready", 20*time.Second)
	file := filepath.Join(t.TempDir(), "capture.pcap")
	p := pasta(t, sb, []string{"-p", file}, udptool, "send", "-to", "192.0.2.1:5900", "-from", "0.0.0.0:41900", "-count", "3", "-size", "1372", "-echo", "-connect")
	wait(t, p, 0)

	gw := netip.AddrPortFrom(sandbox.GatewayAddr4, 5900)
	var out, in, arp int
	for _, pkt := range readCapture(t, file) {
		if pkt.Layer(layers.LayerTypeARP) != nil {
			arp++
		}
		u, ok := pkt.Layer(layers.LayerTypeUDP).(*layers.UDP)
		if !ok || len(u.Payload) != 1372 {
			continue
		}
		ip, ok := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		if !ok {
			continue
		}
		dst, _ := netip.AddrFromSlice(ip.DstIP)
		src, _ := netip.AddrFromSlice(ip.SrcIP)
		switch {
		case netip.AddrPortFrom(dst, uint16(u.DstPort)) == gw && u.SrcPort == 41900:
			out++
		case netip.AddrPortFrom(src, uint16(u.SrcPort)) == gw && u.DstPort == 41900:
			in++
		}
		if bytes.Count(u.Payload, []byte{0}) == len(u.Payload) {
			t.Error("empty payload in capture")
		}
	}
	if out != 3 || in != 3 || arp < 2 {
		t.Fatalf("capture has %d datagrams out, %d in, %d ARP frames; want 3, 3, and a request and a reply", out, in, arp)
	}
}

// TestFragmentsToGuest checks that an IPv4 datagram larger than the
// guest's MTU reaches it as fragments that each fit the MTU (seen in a
// capture), and that the guest's kernel puts them back together.
func TestFragmentsToGuest(t *testing.T) {
	sb := sandbox.New(t)
	echo := sb.Start(t, sb.HostNS, udptool, "echo", "-l", "127.0.0.1:5952", "-timeout", "20s")
	echo.WaitLine(t, "ready", 20*time.Second)
	file := filepath.Join(t.TempDir(), "capture.pcap")
	p := pasta(t, sb, []string{"-m", "1500", "-p", file}, udptool, "send", "-to", "192.0.2.1:5952", "-size", "9000", "-count", "2", "-echo", "-connect")
	wait(t, p, 0)
	fragments := 0
	for _, pkt := range readCapture(t, file) {
		data := pkt.Data()
		ip, ok := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		if !ok || !net4(ip.SrcIP).Equal(sandbox.GatewayAddr4.AsSlice()) {
			continue
		}
		if len(data) > 1514 {
			t.Errorf("frame of %d bytes to a guest with MTU 1500", len(data))
		}
		if ip.Flags&layers.IPv4MoreFragments != 0 || ip.FragOffset != 0 {
			fragments++
		}
	}
	if fragments < 2*7 {
		t.Fatalf("%d fragments to the guest, want at least 14 for two 9000-byte datagrams", fragments)
	}
}

func net4(b []byte) net.IP { return net.IP(b) }

// readCapture reads a pcap file with gopacket's reader and decodes its
// frames, checking the file's link type and record lengths.
func readCapture(t *testing.T, file string) []gopacket.Packet {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	if r.LinkType() != layers.LinkTypeEthernet {
		t.Fatalf("link type %v", r.LinkType())
	}
	var pkts []gopacket.Packet
	for {
		data, ci, err := r.ReadPacketData()
		if err != nil {
			return pkts
		}
		if ci.CaptureLength != len(data) || ci.Length != len(data) {
			t.Errorf("record lengths %d/%d for %d bytes", ci.CaptureLength, ci.Length, len(data))
		}
		pkts = append(pkts, gopacket.NewPacket(data, layers.LayerTypeEthernet, gopacket.Default))
	}
}
