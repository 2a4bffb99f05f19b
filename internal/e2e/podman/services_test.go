package podman

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// serveHTTP serves body at every path on addr inside namespace ns until
// t ends.
func serveHTTP(t *testing.T, ns string, addr string, body string) {
	t.Helper()
	var l net.Listener
	err := inNetns(ns, func() error {
		var err error
		l, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen %s in %s: %v", addr, ns, err)
	}
	srv := &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, body) }),
		ReadHeaderTimeout: 5 * time.Second,
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
}

// serveUDPEcho echoes datagrams on addr inside namespace ns until t ends.
func serveUDPEcho(t *testing.T, ns string, addr netip.AddrPort) {
	t.Helper()
	var c *net.UDPConn
	err := inNetns(ns, func() error {
		var err error
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
		return err
	})
	if err != nil {
		t.Fatalf("listen udp %s in %s: %v", addr, ns, err)
	}
	go func() {
		b := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(b)
			if err != nil {
				return
			}
			_, _ = c.WriteToUDPAddrPort(b[:n], from)
		}
	}()
	t.Cleanup(func() { _ = c.Close() })
}

// serveDNS answers A and AAAA queries for dnsName on addr (UDP) inside
// namespace ns until t ends; other names get NXDOMAIN. It returns the
// count of queries for dnsName.
func serveDNS(t *testing.T, ns string, addr netip.AddrPort) *atomic.Int32 {
	t.Helper()
	var c *net.UDPConn
	err := inNetns(ns, func() error {
		var err error
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
		return err
	})
	if err != nil {
		t.Fatalf("listen DNS %s in %s: %v", addr, ns, err)
	}
	var hits atomic.Int32
	go func() {
		b := make([]byte, 1500)
		for {
			n, from, err := c.ReadFromUDPAddrPort(b)
			if err != nil {
				return
			}
			if resp, hit := dnsAnswer(b[:n]); resp != nil {
				if hit {
					hits.Add(1)
				}
				_, _ = c.WriteToUDPAddrPort(resp, from)
			}
		}
	}()
	t.Cleanup(func() { _ = c.Close() })
	return &hits
}

// dnsAnswer builds the response to query q; hit says the name was ours.
func dnsAnswer(q []byte) (resp []byte, hit bool) {
	if len(q) < 12 || binary.BigEndian.Uint16(q[4:]) != 1 {
		return nil, false
	}
	// The question: labels, then type and class.
	i := 12
	var labels []string
	for i < len(q) && q[i] != 0 {
		l := int(q[i])
		if l > 63 || i+1+l > len(q) {
			return nil, false
		}
		labels = append(labels, string(q[i+1:i+1+l]))
		i += 1 + l
	}
	if i+5 > len(q) {
		return nil, false
	}
	qtype := binary.BigEndian.Uint16(q[i+1:])
	end := i + 5
	name := strings.ToLower(strings.Join(labels, "."))
	resp = append([]byte{}, q[:end]...)
	resp[2] = 0x80 | q[2]&0x01 // QR, RD copied
	resp[3] = 0x80             // RA, NOERROR
	binary.BigEndian.PutUint16(resp[6:], 0)
	binary.BigEndian.PutUint16(resp[8:], 0)
	binary.BigEndian.PutUint16(resp[10:], 0)
	if name != dnsName {
		resp[3] |= 3 // NXDOMAIN
		return resp, false
	}
	var rdata []byte
	switch qtype {
	case 1:
		a := dnsAnswer4.As4()
		rdata = a[:]
	case 28:
		a := dnsAnswer6.As16()
		rdata = a[:]
	default:
		return resp, true
	}
	binary.BigEndian.PutUint16(resp[6:], 1)
	resp = append(resp, 0xc0, 12) // the question's name
	resp = binary.BigEndian.AppendUint16(resp, qtype)
	resp = binary.BigEndian.AppendUint16(resp, 1) // IN
	resp = binary.BigEndian.AppendUint32(resp, 60)
	resp = binary.BigEndian.AppendUint16(resp, uint16(len(rdata)))
	return append(resp, rdata...), true
}

// udpEcho sends a datagram from src (port 0: any) to dst from namespace
// ns and checks the echo: same payload, from dst.
func udpEcho(ns string, src netip.Addr, dst netip.AddrPort) error {
	var c *net.UDPConn
	err := inNetns(ns, func() error {
		var err error
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0)))
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	msg := fmt.Sprintf("gopasst-podman %s -> %s", src, dst)
	if _, err := c.WriteToUDPAddrPort([]byte(msg), dst); err != nil {
		return err
	}
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	b := make([]byte, 2048)
	n, from, err := c.ReadFromUDPAddrPort(b)
	if err != nil {
		return fmt.Errorf("no echo: %v", err)
	}
	if from.Addr().Unmap() != dst.Addr() || from.Port() != dst.Port() {
		return fmt.Errorf("echo from %s, not %s", from, dst)
	}
	if string(b[:n]) != msg {
		return fmt.Errorf("echo %q, sent %q", b[:n], msg)
	}
	return nil
}

// httpGet fetches / from dst over TCP from src in namespace ns and
// checks that the answer carries body.
func httpGet(ns string, src netip.Addr, dst netip.AddrPort, body string) error {
	var c net.Conn
	err := inNetns(ns, func() error {
		d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))}
		var err error
		c, err = d.Dial("tcp", dst.String())
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := fmt.Fprintf(c, "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", dst); err != nil {
		return err
	}
	got := readAll(c)
	if !strings.Contains(got, body) {
		return fmt.Errorf("answer %q has no %q", trim(got), body)
	}
	return nil
}

// trim shortens s for messages.
func trim(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}
