// Command dhcp6probe is a minimal DHCPv6 client (RFC 8415) for the qemu
// end-to-end tests of gopasst: busybox-static in Debian 12 has no
// udhcpc6.
//
//	dhcp6probe [-i eth0] [-timeout 5s] [-tries 3]
//
// It sends a Solicit with Rapid Commit, an IA_NA and an Option Request for
// DNS servers and the domain search list from the link-local address of
// the interface to ff02::1:2 port 547. If the server answers with an
// Advertise, it sends a Request for the advertised address, as a client
// without Rapid Commit does. It prints one line of JSON on stdout:
//
//	{"reply":"reply","requested":false,"rapid_commit":true,"addresses":["2001:db8::2"],
//	 "preferred":[...],"valid":[...],"dns":["..."],"search":["..."],
//	 "server_id":"0003..."}
//
// or {"error":"..."}, exiting with status 1. It does not configure the
// address: the caller does (ip -6 addr add ADDR/128 dev eth0).
package main

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"
)

// Message types.
const (
	msgSolicit   = 1
	msgAdvertise = 2
	msgRequest   = 3
	msgReply     = 7
)

// Option codes.
const (
	optClientID     = 1
	optServerID     = 2
	optIANA         = 3
	optIAAddr       = 5
	optORO          = 6
	optElapsedTime  = 8
	optStatusCode   = 13
	optRapidCommit  = 14
	optDNSServers   = 23
	optDomainSearch = 24
)

// result is printed as JSON.
type result struct {
	Reply       string   `json:"reply,omitempty"`
	Requested   bool     `json:"requested"`
	RapidCommit bool     `json:"rapid_commit"`
	Addresses   []string `json:"addresses"`
	Preferred   []uint32 `json:"preferred"`
	Valid       []uint32 `json:"valid"`
	DNS         []string `json:"dns"`
	Search      []string `json:"search"`
	ServerID    string   `json:"server_id,omitempty"`
	Status      string   `json:"status,omitempty"`
	Error       string   `json:"error,omitempty"`
}

func main() {
	ifname := flag.String("i", "eth0", "interface")
	timeout := flag.Duration("timeout", 2*time.Second, "time to wait for each answer")
	tries := flag.Int("tries", 3, "transmissions of each message")
	flag.Parse()
	r, err := run(*ifname, *timeout, *tries)
	if err != nil {
		r = result{Error: err.Error()}
	}
	b, _ := json.Marshal(r)
	fmt.Println(string(b))
	if err != nil {
		os.Exit(1)
	}
}

// option is one DHCPv6 option.
type option struct {
	code uint16
	data []byte
}

func appendOpt(b []byte, code uint16, data []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, code)
	b = binary.BigEndian.AppendUint16(b, uint16(len(data)))
	return append(b, data...)
}

func parseOpts(b []byte) ([]option, error) {
	var opts []option
	for len(b) > 0 {
		if len(b) < 4 {
			return nil, errors.New("truncated option header")
		}
		code, n := binary.BigEndian.Uint16(b), int(binary.BigEndian.Uint16(b[2:]))
		if len(b) < 4+n {
			return nil, fmt.Errorf("option %d: truncated", code)
		}
		opts = append(opts, option{code, b[4 : 4+n]})
		b = b[4+n:]
	}
	return opts, nil
}

func find(opts []option, code uint16) ([]byte, bool) {
	for _, o := range opts {
		if o.code == code {
			return o.data, true
		}
	}
	return nil, false
}

func run(ifname string, timeout time.Duration, tries int) (result, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return result{}, err
	}
	if len(ifi.HardwareAddr) != 6 {
		return result{}, fmt.Errorf("%s: no Ethernet address", ifname)
	}
	ll, err := linkLocal(ifi)
	if err != nil {
		return result{}, err
	}
	conn, err := net.ListenUDP("udp6", &net.UDPAddr{IP: ll.AsSlice(), Port: 546, Zone: ifname})
	if err != nil {
		return result{}, err
	}
	defer conn.Close()
	server := &net.UDPAddr{IP: net.ParseIP("ff02::1:2"), Port: 547, Zone: ifname}

	// DUID-LL: type 3, hardware type 1 (Ethernet), MAC address.
	duid := append([]byte{0, 3, 0, 1}, ifi.HardwareAddr...)
	iana := binary.BigEndian.AppendUint32(nil, 1) // IAID
	iana = binary.BigEndian.AppendUint32(iana, 0) // T1
	iana = binary.BigEndian.AppendUint32(iana, 0) // T2
	oro := binary.BigEndian.AppendUint16(nil, optDNSServers)
	oro = binary.BigEndian.AppendUint16(oro, optDomainSearch)
	common := appendOpt(nil, optClientID, duid)
	common = appendOpt(common, optElapsedTime, []byte{0, 0})
	common = appendOpt(common, optORO, oro)

	solicit := appendOpt(common, optIANA, iana)
	solicit = appendOpt(solicit, optRapidCommit, nil)
	typ, opts, err := exchange(conn, server, msgSolicit, solicit, timeout, tries, msgAdvertise, msgReply)
	if err != nil {
		return result{}, fmt.Errorf("solicit: %w", err)
	}
	if typ == msgAdvertise {
		sid, ok := find(opts, optServerID)
		if !ok {
			return result{}, errors.New("advertise without server identifier")
		}
		ia, ok := find(opts, optIANA)
		if !ok {
			ia = iana
		}
		req := appendOpt(common, optServerID, sid)
		req = appendOpt(req, optIANA, ia)
		if typ, opts, err = exchange(conn, server, msgRequest, req, timeout, tries, msgReply); err != nil {
			return result{}, fmt.Errorf("request: %w", err)
		}
		r, err := describe(typ, opts)
		r.Requested = true
		return r, err
	}
	return describe(typ, opts)
}

// exchange sends a message of type typ with body opts until an answer of
// one of the types want with our transaction ID arrives.
func exchange(conn *net.UDPConn, to *net.UDPAddr, typ byte, opts []byte, timeout time.Duration, tries int, want ...byte) (byte, []option, error) {
	var xid [3]byte
	if _, err := rand.Read(xid[:]); err != nil {
		return 0, nil, err
	}
	msg := append([]byte{typ}, xid[:]...)
	msg = append(msg, opts...)
	buf := make([]byte, 65536)
	var lastErr error
	for i := 0; i < tries; i++ {
		if _, err := conn.WriteToUDP(msg, to); err != nil {
			return 0, nil, err
		}
		deadline := time.Now().Add(timeout)
		for {
			_ = conn.SetReadDeadline(deadline)
			n, _, err := conn.ReadFromUDP(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					lastErr = fmt.Errorf("no answer after %d tries of %v", i+1, timeout)
					break
				}
				return 0, nil, err
			}
			if n < 4 || !bytes.Equal(buf[1:4], xid[:]) || bytes.IndexByte(want, buf[0]) < 0 {
				continue
			}
			o, err := parseOpts(buf[4:n])
			if err != nil {
				return 0, nil, fmt.Errorf("bad answer: %w", err)
			}
			return buf[0], o, nil
		}
	}
	return 0, nil, lastErr
}

// describe turns an Advertise or Reply into the printed result.
func describe(typ byte, opts []option) (result, error) {
	r := result{Reply: "reply", Addresses: []string{}, Preferred: []uint32{}, Valid: []uint32{},
		DNS: []string{}, Search: []string{}}
	if typ == msgAdvertise {
		r.Reply = "advertise"
	}
	_, r.RapidCommit = find(opts, optRapidCommit)
	if sid, ok := find(opts, optServerID); ok {
		r.ServerID = hex.EncodeToString(sid)
	}
	if st, ok := find(opts, optStatusCode); ok && len(st) >= 2 {
		r.Status = fmt.Sprintf("%d %s", binary.BigEndian.Uint16(st), st[2:])
	}
	for _, o := range opts {
		switch o.code {
		case optIANA:
			if len(o.data) < 12 {
				return r, errors.New("short IA_NA")
			}
			sub, err := parseOpts(o.data[12:])
			if err != nil {
				return r, fmt.Errorf("IA_NA: %w", err)
			}
			for _, s := range sub {
				switch {
				case s.code == optIAAddr && len(s.data) >= 24:
					a := netip.AddrFrom16([16]byte(s.data[:16]))
					r.Addresses = append(r.Addresses, a.String())
					r.Preferred = append(r.Preferred, binary.BigEndian.Uint32(s.data[16:]))
					r.Valid = append(r.Valid, binary.BigEndian.Uint32(s.data[20:]))
				case s.code == optStatusCode && len(s.data) >= 2:
					r.Status = fmt.Sprintf("%d %s", binary.BigEndian.Uint16(s.data), s.data[2:])
				}
			}
		case optDNSServers:
			for b := o.data; len(b) >= 16; b = b[16:] {
				r.DNS = append(r.DNS, netip.AddrFrom16([16]byte(b[:16])).String())
			}
		case optDomainSearch:
			r.Search = append(r.Search, decodeNames(o.data)...)
		}
	}
	return r, nil
}

// decodeNames decodes a list of uncompressed DNS names (RFC 1035 3.1).
func decodeNames(b []byte) []string {
	var names, labels []string
	for len(b) > 0 {
		n := int(b[0])
		b = b[1:]
		if n == 0 {
			names = append(names, strings.Join(labels, "."))
			labels = nil
			continue
		}
		if n > len(b) {
			break
		}
		labels = append(labels, string(b[:n]))
		b = b[n:]
	}
	return names
}

// linkLocal returns the link-local address of ifi, waiting up to five
// seconds for duplicate address detection to finish.
func linkLocal(ifi *net.Interface) (netip.Addr, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		addrs, err := ifi.Addrs()
		if err != nil {
			return netip.Addr{}, err
		}
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(ipn.IP); ok && ip.Is6() && ip.IsLinkLocalUnicast() {
					// Binding fails while the address is tentative.
					c, err := net.ListenUDP("udp6", &net.UDPAddr{IP: ipn.IP, Zone: ifi.Name})
					if err == nil {
						c.Close()
						return ip, nil
					}
				}
			}
		}
		if time.Now().After(deadline) {
			return netip.Addr{}, fmt.Errorf("%s: no usable link-local address", ifi.Name)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
