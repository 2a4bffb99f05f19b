package tcp

import (
	"net"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

var (
	src4 = netip.MustParseAddr("192.0.2.2")
	dst4 = netip.MustParseAddr("198.51.100.7")
	src6 = netip.MustParseAddr("2001:db8::2")
	dst6 = netip.MustParseAddr("2001:db8:1::7")
)

// encode builds a TCP segment from src to dst with gopacket, checksummed.
func encode(tb testing.TB, src, dst netip.Addr, t *layers.TCP, payload []byte) []byte {
	tb.Helper()
	var nl gopacket.NetworkLayer
	if src.Is4() {
		nl = &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: net.IP(src.AsSlice()), DstIP: net.IP(dst.AsSlice())}
	} else {
		nl = &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP, SrcIP: net.IP(src.AsSlice()), DstIP: net.IP(dst.AsSlice())}
	}
	if err := t.SetNetworkLayerForChecksum(nl); err != nil {
		tb.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, t, gopacket.Payload(payload)); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

func TestParseSegment(t *testing.T) {
	syn := &layers.TCP{SrcPort: 40000, DstPort: 80, Seq: 1000, SYN: true, Window: 64240,
		Options: []layers.TCPOption{
			{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x05, 0xb4}},
			{OptionType: layers.TCPOptionKindSACKPermitted, OptionLength: 2},
			{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: make([]byte, 8)},
			{OptionType: layers.TCPOptionKindNop},
			{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{7}},
		}}
	b := encode(t, src4, dst4, syn, nil)
	var s segment
	if r := parseSegment(b, &s); r != segOK {
		t.Fatalf("SYN: %d", r)
	}
	if s.sport != 40000 || s.dport != 80 || s.seq != 1000 || s.flags != flagSYN || s.wnd != 64240 || s.mss != 1460 || s.ws != 7 || len(s.payload) != 0 {
		t.Errorf("SYN parsed as %+v", s)
	}
	if s.seqLen() != 1 {
		t.Errorf("SYN takes %d of sequence space, want 1", s.seqLen())
	}
	if !checksumOK(b, src4, dst4) {
		t.Error("gopacket's checksum refused")
	}
	b[len(b)-1] ^= 1
	if checksumOK(b, src4, dst4) {
		t.Error("corrupted segment's checksum accepted")
	}

	data := &layers.TCP{SrcPort: 40000, DstPort: 80, Seq: 1001, Ack: 5, ACK: true, PSH: true, FIN: true, Window: 501}
	b = encode(t, src6, dst6, data, []byte("hello"))
	if r := parseSegment(b, &s); r != segOK {
		t.Fatalf("data: %d", r)
	}
	if string(s.payload) != "hello" || s.ack != 5 || s.flags != flagACK|flagPSH|flagFIN || s.ws != noScale || s.mss != 0 || s.seqLen() != 6 {
		t.Errorf("data parsed as %+v", s)
	}
	if !checksumOK(b, src6, dst6) {
		t.Error("IPv6 checksum refused")
	}

	for _, c := range []struct {
		name string
		b    []byte
		want parseResult
	}{
		{"short", b[:19], segShort},
		{"offset below 5", func() []byte { x := append([]byte(nil), b...); x[12] = 4 << 4; return x }(), segBadOffset},
		{"offset past the end", func() []byte { x := append([]byte(nil), b[:24]...); x[12] = 7 << 4; return x }(), segBadOffset},
		{"option past the header", func() []byte {
			x := encode(t, src4, dst4, syn, nil)
			x[20+4+2+10+1+1] = 40 // the window scale option's length
			return x
		}(), segBadOption},
		{"SYN and FIN", encode(t, src4, dst4, &layers.TCP{SrcPort: 1, DstPort: 2, SYN: true, FIN: true}, nil), segBadFlags},
		{"SYN and RST", encode(t, src4, dst4, &layers.TCP{SrcPort: 1, DstPort: 2, SYN: true, RST: true}, nil), segBadFlags},
		{"no flags", encode(t, src4, dst4, &layers.TCP{SrcPort: 1, DstPort: 2}, []byte("x")), segBadFlags},
		{"source port 0", encode(t, src4, dst4, &layers.TCP{SrcPort: 0, DstPort: 2, ACK: true}, nil), segBadPort},
		{"destination port 0", encode(t, src4, dst4, &layers.TCP{SrcPort: 1, DstPort: 0, SYN: true}, nil), segBadPort},
	} {
		if r := parseSegment(c.b, &s); r != c.want {
			t.Errorf("%s: got %d, want %d", c.name, r, c.want)
		}
	}
}

// TestPutHeader checks our headers with gopacket's decoder, with full and
// partial checksums.
func TestPutHeader(t *testing.T) {
	for _, syn := range []bool{false, true} {
		b := make([]byte, 64)
		flags := uint8(flagACK | flagPSH)
		if syn {
			flags = flagSYN | flagACK
		}
		n := putHeader(b, 80, 40000, 7, 1001, flags, 1234, syn, 1460, ourScale)
		copy(b[n:], "payload")
		seg := b[:n+7]
		if syn {
			seg = b[:n]
		}
		c := checksum(seg, dst4, src4, false)
		seg[16], seg[17] = byte(c>>8), byte(c)
		if !checksumOK(seg, dst4, src4) {
			t.Errorf("syn %v: our checksum does not verify", syn)
		}
		p := gopacket.NewPacket(seg, layers.LayerTypeTCP, gopacket.Default)
		tl, ok := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if !ok {
			t.Fatalf("syn %v: gopacket: %v", syn, p.ErrorLayer())
		}
		if tl.SrcPort != 80 || tl.DstPort != 40000 || tl.Seq != 7 || tl.Ack != 1001 || !tl.ACK || tl.SYN != syn || tl.Window != 1234 {
			t.Errorf("syn %v: gopacket sees %+v", syn, tl)
		}
		if syn {
			var mss, ws bool
			for _, o := range tl.Options {
				switch o.OptionType {
				case layers.TCPOptionKindMSS:
					mss = len(o.OptionData) == 2 && o.OptionData[0] == 0x05 && o.OptionData[1] == 0xb4
				case layers.TCPOptionKindWindowScale:
					ws = len(o.OptionData) == 1 && o.OptionData[0] == ourScale
				}
			}
			if !mss || !ws {
				t.Errorf("SYN options %+v", tl.Options)
			}
		} else if string(tl.Payload) != "payload" {
			t.Errorf("payload %q", tl.Payload)
		}
	}
}

func TestSeqLT(t *testing.T) {
	if !seqLT(0xfffffff0, 5) || seqLT(5, 0xfffffff0) || seqLT(3, 3) {
		t.Error("sequence comparison does not wrap")
	}
}

// FuzzSegment feeds the parser arbitrary segments: it never panics, and
// what it accepts has its payload inside the segment and options only on
// SYNs.
func FuzzSegment(f *testing.F) {
	f.Add(encode(f, src4, dst4, &layers.TCP{SrcPort: 1, DstPort: 2, SYN: true, Options: []layers.TCPOption{
		{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{1, 2}}}}, nil))
	f.Add(encode(f, src6, dst6, &layers.TCP{SrcPort: 1, DstPort: 2, ACK: true}, []byte("data")))
	f.Fuzz(func(t *testing.T, b []byte) {
		var s segment
		if parseSegment(b, &s) != segOK {
			return
		}
		off := int(b[12]>>4) * 4
		if len(s.payload) != len(b)-off {
			t.Fatalf("payload of %d bytes in a segment of %d with offset %d", len(s.payload), len(b), off)
		}
		if s.flags&flagSYN == 0 && (s.mss != 0 || s.ws != noScale) {
			t.Fatalf("options taken from a segment without SYN: %+v", s)
		}
		if s.ws != noScale && s.ws > 14 {
			t.Fatalf("window scale %d", s.ws)
		}
	})
}
