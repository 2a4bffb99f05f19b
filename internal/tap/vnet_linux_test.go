package tap_test

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"
	"unsafe"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/gopasst/gopasst/internal/netns"
	"github.com/gopasst/gopasst/internal/packet"
	"github.com/gopasst/gopasst/internal/tap"
	"github.com/gopasst/gopasst/internal/wirecheck"
)

// TestWritePartial writes datagrams with a partial UDP checksum through a
// real tap with offloads into a namespace, and checks what its kernel made
// of them: a socket there receives each payload intact, and a packet
// socket on the tap sees each frame marked as needing its checksum, with
// the pseudo-header sum in the checksum field, so that completing it over
// the datagram, as a device would, gives the checksum gopacket computes.
func TestWritePartial(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if _, err := os.Stat(netns.TunDevice); err != nil {
		t.Skipf("no %s: %v", netns.TunDevice, err)
	}
	ns, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	guestMAC := net.HardwareAddr{0x02, 0, 0, 0, 0, 2}
	ourMAC := packet.MAC{0x02, 0, 0, 0, 0, 1}
	fd, _, err := ns.CreateTap("gptap0", 65520, guestMAC, true)
	if err != nil {
		t.Fatal(err)
	}
	guest4, guest6 := netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("2001:db8::2")
	if err := ns.Configure(netns.IfConfig{Ifname: "gptap0", Up: true, MTU: 65520,
		Addr4: netip.PrefixFrom(guest4, 24), Addr6: netip.PrefixFrom(guest6, 64)}); err != nil {
		t.Fatal(err)
	}
	dev, err := tap.NewVnetDevice(fd, true)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	if !dev.Offloads() {
		t.Skip("the kernel refused the tap offloads (before Linux 6.2)")
	}

	var capFd, udp4, udp6 int
	err = ns.Do(func() error {
		ifc, err := net.InterfaceByName("gptap0")
		if err != nil {
			return err
		}
		proto := int(htons(unix.ETH_P_ALL))
		if capFd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto); err != nil {
			return err
		}
		if err := unix.SetsockoptInt(capFd, unix.SOL_PACKET, unix.PACKET_AUXDATA, 1); err != nil {
			return err
		}
		if err := unix.Bind(capFd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: ifc.Index}); err != nil {
			return err
		}
		if udp4, err = boundUDP(unix.AF_INET, &unix.SockaddrInet4{Port: 5000, Addr: guest4.As4()}); err != nil {
			return err
		}
		udp6, err = boundUDP(unix.AF_INET6, &unix.SockaddrInet6{Port: 5000, Addr: guest6.As16()})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(capFd)
	defer unix.Close(udp4)
	defer unix.Close(udp6)

	cases := []struct {
		name     string
		src, dst netip.Addr
		sock     int
		size     int
	}{
		{"IPv4 small", netip.MustParseAddr("192.0.2.1"), guest4, udp4, 64},
		{"IPv4 large", netip.MustParseAddr("192.0.2.1"), guest4, udp4, 65000},
		{"IPv4 odd", netip.MustParseAddr("192.0.2.1"), guest4, udp4, 1371},
		{"IPv6 small", netip.MustParseAddr("2001:db8::1"), guest6, udp6, 64},
		{"IPv6 large", netip.MustParseAddr("2001:db8::1"), guest6, udp6, 65000},
		{"IPv6 odd", netip.MustParseAddr("2001:db8::1"), guest6, udp6, 1371},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			payload := make([]byte, c.size)
			for i := range payload {
				payload[i] = byte(i*7 + c.size)
			}
			buf := make([]byte, packet.MaxHeadroom+len(payload))
			copy(buf[packet.MaxHeadroom:], payload)
			var l3, et int
			if c.dst.Is4() {
				l3, et = packet.IPv4Len, packet.EtherTypeIPv4
			} else {
				l3, et = packet.IPv6Len, packet.EtherTypeIPv6
			}
			start := packet.MaxHeadroom - packet.UDPLen - l3 - packet.EthLen
			put := packet.PutUDP6Partial
			if c.dst.Is4() {
				put = packet.PutUDP4Partial
			}
			put(buf[start+packet.EthLen:], c.src, c.dst, 4000, 5000, len(payload))
			packet.PutEthernet(buf[start:], packet.MAC(guestMAC), ourMAC, uint16(et))
			ok, err := dev.WritePartial(buf[start:], packet.MaxHeadroom-start)
			if !ok || err != nil {
				t.Fatalf("WritePartial: %v, %v", ok, err)
			}

			got := make([]byte, 65536)
			n, err := recvTimeout(c.sock, got)
			if err != nil {
				t.Fatalf("no datagram in the namespace: %v", err)
			}
			if !bytes.Equal(got[:n], payload) {
				t.Fatalf("payload of %d bytes arrived as %d bytes, or changed", len(payload), n)
			}

			frame, status := captureUDP(t, capFd, 5000)
			if status&unix.TP_STATUS_CSUMNOTREADY == 0 {
				t.Errorf("frame not marked as needing its checksum (tp_status %#x)", status)
			}
			pkt := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
			u, _ := pkt.Layer(layers.LayerTypeUDP).(*layers.UDP)
			if u == nil {
				t.Fatalf("captured frame is not UDP: %v", pkt)
			}
			completed := complete(frame[len(frame)-len(payload)-packet.UDPLen:])
			var nl gopacket.NetworkLayer
			if ip4, ok := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok {
				nl = ip4
			} else if ip6, ok := pkt.Layer(layers.LayerTypeIPv6).(*layers.IPv6); ok {
				nl = ip6
			}
			if err := u.SetNetworkLayerForChecksum(nl); err != nil {
				t.Fatal(err)
			}
			sb := gopacket.NewSerializeBuffer()
			if err := gopacket.SerializeLayers(sb, gopacket.SerializeOptions{ComputeChecksums: true}, u, gopacket.Payload(u.Payload)); err != nil {
				t.Fatal(err)
			}
			want := binary.BigEndian.Uint16(sb.Bytes()[6:8])
			if completed != want {
				t.Errorf("completed checksum %#04x, gopacket computes %#04x", completed, want)
			}
		})
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func boundUDP(family int, sa unix.Sockaddr) (int, error) {
	s, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	_ = unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_RCVBUF, 1<<20)
	if err := unix.Bind(s, sa); err != nil {
		unix.Close(s)
		return -1, err
	}
	return s, nil
}

// recvTimeout receives one datagram or frame from s within 5 seconds.
func recvTimeout(s int, buf []byte) (int, error) {
	tv := unix.NsecToTimeval(int64(5 * time.Second))
	if err := unix.SetsockoptTimeval(s, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return 0, err
	}
	n, _, err := unix.Recvfrom(s, buf, 0)
	return n, err
}

// captureUDP returns the next frame on the packet socket that carries a
// UDP datagram to port, and its tp_status.
func captureUDP(t *testing.T, s int, port uint16) ([]byte, uint32) {
	t.Helper()
	tv := unix.NsecToTimeval(int64(5 * time.Second))
	if err := unix.SetsockoptTimeval(s, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	for {
		buf, oob := make([]byte, 65600), make([]byte, 256)
		n, oobn, _, _, err := unix.Recvmsg(s, buf, oob, 0)
		if err != nil {
			t.Fatalf("no frame captured: %v", err)
		}
		pkt := gopacket.NewPacket(buf[:n], layers.LayerTypeEthernet, gopacket.Default)
		u, _ := pkt.Layer(layers.LayerTypeUDP).(*layers.UDP)
		if u == nil || uint16(u.DstPort) != port {
			continue // router solicitations, MLD and the like
		}
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			if m.Header.Level == unix.SOL_PACKET && m.Header.Type == unix.PACKET_AUXDATA && len(m.Data) >= int(unsafe.Sizeof(unix.TpacketAuxdata{})) {
				return buf[:n], binary.NativeEndian.Uint32(m.Data[0:4])
			}
		}
		t.Fatal("captured frame without auxiliary data")
	}
}

// complete finishes a partial UDP checksum as a device does: the checksum
// of the datagram, checksum field (the pseudo-header sum) included; zero
// is sent as 0xffff.
func complete(udp []byte) uint16 {
	if c := wirecheck.Checksum(udp); c != 0 {
		return c
	}
	return 0xffff
}
