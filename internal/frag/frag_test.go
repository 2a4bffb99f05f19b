package frag

import (
	"bytes"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/gopasst/gopasst/internal/packet"
)

var (
	src4 = netip.MustParseAddr("192.0.2.2")
	dst4 = netip.MustParseAddr("192.0.2.1")
	src6 = netip.MustParseAddr("2001:db8::2")
	dst6 = netip.MustParseAddr("2001:db8::1")
	mac  = net.HardwareAddr{2, 0, 0, 0, 0, 1}
)

// udpBytes is a UDP header and payload encoded by gopacket.
func udpBytes(t *testing.T, src, dst netip.Addr, payload []byte) []byte {
	udp := &layers.UDP{SrcPort: 40000, DstPort: 5000}
	if src.Is4() {
		_ = udp.SetNetworkLayerForChecksum(&layers.IPv4{SrcIP: src.AsSlice(), DstIP: dst.AsSlice(), Protocol: layers.IPProtocolUDP})
	} else {
		_ = udp.SetNetworkLayerForChecksum(&layers.IPv6{SrcIP: src.AsSlice(), DstIP: dst.AsSlice(), NextHeader: layers.IPProtocolUDP})
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, udp, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return bytes.Clone(buf.Bytes())
}

// fragments splits data into frames of chunk bytes (a multiple of 8),
// built by gopacket, in the given order of indices.
func fragments(t *testing.T, src, dst netip.Addr, id uint32, data []byte, chunk int) [][]byte {
	var out [][]byte
	for off := 0; off < len(data); off += chunk {
		end := min(off+chunk, len(data))
		more := end < len(data)
		buf := gopacket.NewSerializeBuffer()
		var err error
		if src.Is4() {
			ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, Id: uint16(id),
				FragOffset: uint16(off / 8), SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
			if more {
				ip.Flags = layers.IPv4MoreFragments
			}
			err = gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
				&layers.Ethernet{SrcMAC: mac, DstMAC: mac, EthernetType: layers.EthernetTypeIPv4}, ip, gopacket.Payload(data[off:end]))
		} else {
			ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolIPv6Fragment, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
			fh := &layers.IPv6Fragment{NextHeader: layers.IPProtocolUDP, FragmentOffset: uint16(off / 8), MoreFragments: more, Identification: id}
			err = gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true},
				&layers.Ethernet{SrcMAC: mac, DstMAC: mac, EthernetType: layers.EthernetTypeIPv6}, ip, fh, gopacket.Payload(data[off:end]))
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, bytes.Clone(buf.Bytes()))
	}
	return out
}

func add(t *testing.T, r *Reassembler, frame []byte) (*packet.Parsed, Result) {
	t.Helper()
	var p packet.Parsed
	if d := packet.Parse(frame, &p); d != packet.DropNone || !p.Fragment {
		t.Fatalf("parse: %v fragment=%v", d, p.Fragment)
	}
	return r.Add(&p)
}

func TestReassemble(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, fam := range [][2]netip.Addr{{src4, dst4}, {src6, dst6}} {
		for _, size := range []int{100, 1473, 9000, 65000} {
			payload := make([]byte, size)
			for i := range payload {
				payload[i] = byte(rng.Uint32())
			}
			data := udpBytes(t, fam[0], fam[1], payload)
			frames := fragments(t, fam[0], fam[1], 7, data, min(1448, len(data)/2/8*8))
			// Any order, with a duplicate thrown in.
			rng.Shuffle(len(frames), func(i, j int) { frames[i], frames[j] = frames[j], frames[i] })
			frames = append(frames[:1], frames...)
			r := New()
			var got *packet.Parsed
			for i, f := range frames {
				p, res := add(t, r, f)
				switch {
				case res == Complete:
					if i != len(frames)-1 {
						t.Fatalf("complete after %d of %d fragments", i+1, len(frames))
					}
					got = p
				case res == Duplicate && i == 1:
				case res != Pending:
					t.Fatalf("%v size %d fragment %d: %v", fam[0], size, i, res)
				}
			}
			if got == nil || !bytes.Equal(got.Payload, payload) || got.SrcPort != 40000 || got.DstPort != 5000 || got.Src4 != fam[0] {
				t.Fatalf("%v size %d: reassembled datagram wrong", fam[0], size)
			}
			if r.Pending() != 0 {
				t.Fatalf("%d pending after completion", r.Pending())
			}
			r.Release()
		}
	}
}

func TestOverlapDropsDatagram(t *testing.T) {
	data := udpBytes(t, src4, dst4, make([]byte, 3000))
	a := fragments(t, src4, dst4, 9, data, 1480)
	b := fragments(t, src4, dst4, 9, data, 1000) // different cuts: overlaps
	r := New()
	if _, res := add(t, r, a[0]); res != Pending {
		t.Fatal(res)
	}
	if _, res := add(t, r, b[1]); res != Overlap {
		t.Fatalf("overlap: %v", res)
	}
	if r.Pending() != 0 {
		t.Fatal("overlapping datagram kept")
	}
}

func TestLimits(t *testing.T) {
	r := New()
	clock := time.Unix(1000, 0)
	r.now = func() time.Time { return clock }
	data := udpBytes(t, src4, dst4, make([]byte, 2000))
	// Fill every slot with a first fragment.
	for id := 0; id < MaxPending; id++ {
		if _, res := add(t, r, fragments(t, src4, dst4, uint32(id), data, 1000)[0]); res != Pending {
			t.Fatal(res)
		}
	}
	if _, res := add(t, r, fragments(t, src4, dst4, 999, data, 1000)[0]); res != Full {
		t.Fatalf("want Full, got %v", res)
	}
	// After the timeout the slots are free again.
	clock = clock.Add(Timeout + time.Second)
	if _, res := add(t, r, fragments(t, src4, dst4, 999, data, 1000)[0]); res != Pending {
		t.Fatalf("after timeout: %v", res)
	}
	if r.Pending() != 1 {
		t.Fatalf("%d pending after timeout", r.Pending())
	}
	// A fragment reaching past 65535 bytes drops its datagram.
	var p packet.Parsed
	packet.Parse(fragments(t, src4, dst4, 999, data, 1000)[1], &p)
	p.FragOffset = 65000
	if _, res := r.Add(&p); res != TooBig || r.Pending() != 0 {
		t.Fatalf("oversized: %v, %d pending", res, r.Pending())
	}
}
