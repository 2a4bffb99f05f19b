// Package icmp forwards the guest's ICMP and ICMPv6 echo requests (ping)
// through unprivileged ping sockets on the host, as the reference does.
//
// # Theory of operation
//
// A ping socket (SOCK_DGRAM with IPPROTO_ICMP or IPPROTO_ICMPV6) sends
// echo requests and receives the matching replies without privileges: the
// kernel owns the echo identifier, as it owns a UDP socket's port, and
// fills it in and checksums the message on the way out. So each flow — a
// guest address, the address it pings and the guest's identifier, keyed
// in the flow table with the identifier in place of both ports — gets a
// socket of its own, connected to the destination; the identifier the
// kernel picked is the target side's forwarding "port". A reply that
// arrives on the socket goes to the guest with the guest's identifier put
// back, the sequence number and payload untouched, from the address the
// guest pinged (the gateway stands for the host's loopback, as for UDP).
//
// The guest's requests are checked before they are sent: an echo request
// (IPv4 type 8, ICMPv6 type 128, code 0) of at least the 8-byte header
// whose checksum is right. Other ICMP messages from the guest (replies,
// errors, MLD) are counted and dropped, as are requests with a bad
// checksum and, where the host forbids ping sockets to gopasst's group
// (net.ipv4.ping_group_range), every request, after one warning at start.
//
// A flow expires 60 s after its last request. Flows count against
// --max-flows with those of every other protocol.
package icmp

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopasst/gopasst/internal/evloop"
	"github.com/gopasst/gopasst/internal/flow"
	"github.com/gopasst/gopasst/internal/fwd"
	"github.com/gopasst/gopasst/internal/log"
	"github.com/gopasst/gopasst/internal/packet"
	"github.com/gopasst/gopasst/internal/sockaddr"
	"github.com/gopasst/gopasst/internal/stats"
	"github.com/gopasst/gopasst/internal/toguest"
)

// Echo message types.
const (
	echoRequest4 = 8
	echoReply4   = 0
	echoRequest6 = 128
	echoReply6   = 129
	hdrLen       = 8 // type, code, checksum, identifier, sequence
)

// DefaultTimeout is how long a flow lives after its last request.
const DefaultTimeout = 60 * time.Second

// recvBatch bounds the replies read from one socket per event.
const recvBatch = 16

// Config is what an Engine needs.
type Config struct {
	Rules *fwd.Rules
	Guest *fwd.Guest
	Loop  *evloop.Loop
	Flows *flow.Table
	// Out writes to the guest from the loop's goroutine.
	Out   *toguest.Writer
	Stats *stats.Counters
	// Timeout expires idle flows (DefaultTimeout if zero).
	Timeout time.Duration
	// Socket is socket(2) (unix.Socket if nil; tests may fail it).
	Socket func(domain, typ, proto int) (int, error)
}

// Engine is ICMP echo translation.
type Engine struct {
	cfg   Config
	st    *stats.Counters
	ps    *stats.Proto
	tab   *flow.Table
	out   *toguest.Writer
	kSock evloop.Kind
	// allowed says, per family (0 IPv4, 1 IPv6), whether the host lets
	// gopasst open ping sockets.
	allowed [2]bool
	// buf receives replies behind room for the headers to the guest.
	buf []byte
}

// New probes whether ping sockets may be opened (warning once if not),
// registers the engine's sockets' kind and its expiry with the loop and
// returns it.
func New(cfg Config) *Engine {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Socket == nil {
		cfg.Socket = unix.Socket
	}
	e := &Engine{cfg: cfg, st: cfg.Stats, ps: &cfg.Stats.ICMP, tab: cfg.Flows, out: cfg.Out,
		buf: make([]byte, packet.MaxHeadroom+65536)}
	e.kSock = cfg.Loop.Register("ping socket", evloop.HandlerFunc(e.event))
	cfg.Loop.Every(e.expire)
	var denied []string
	for i, fam := range []bool{cfg.Rules.IPv4, cfg.Rules.IPv6} {
		if !fam {
			continue
		}
		fd, err := e.socket(i == 0)
		if err == nil {
			unix.Close(fd)
			e.allowed[i] = true
			continue
		}
		denied = append(denied, familyName(i)+": "+err.Error())
	}
	if len(denied) > 0 {
		e.warn(strings.Join(denied, ", "))
	}
	return e
}

func familyName(fam int) string {
	if fam == 0 {
		return "IPv4"
	}
	return "IPv6"
}

func (e *Engine) warn(why string) {
	log.Warnf("ICMP echo: no ping sockets (%s): echo requests are dropped; net.ipv4.ping_group_range must include gopasst's group", why)
}

func (e *Engine) socket(v4 bool) (int, error) {
	if v4 {
		return e.cfg.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
	}
	return e.cfg.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMPV6)
}

// checkRequest returns the identifier of msg, an echo request of IP
// protocol proto from src to dst, or the reason to drop it.
func checkRequest(msg []byte, proto uint8, src, dst netip.Addr) (uint16, stats.Reason, bool) {
	v4 := src.Is4()
	if v4 != (proto == packet.ProtoICMP) {
		return 0, stats.DropUnsupported, false // ICMPv6 over IPv4, or ICMP over IPv6
	}
	if len(msg) < hdrLen {
		return 0, stats.DropMalformed, false
	}
	if v4 && (msg[0] != echoRequest4 || msg[1] != 0) || !v4 && (msg[0] != echoRequest6 || msg[1] != 0) {
		return 0, stats.DropICMPType, false
	}
	var sum uint32
	if !v4 {
		sum = packet.PseudoSum6(src.As16(), dst.As16(), packet.ProtoICMPv6, len(msg))
	}
	if packet.Fold(packet.Sum(msg, sum)) != 0 {
		return 0, stats.DropChecksum, false
	}
	return binary.BigEndian.Uint16(msg[4:6]), 0, true
}

// HandleTap sends the guest's echo requests.
func (e *Engine) HandleTap(pkts []*packet.Parsed) {
	now := evloop.Now()
	e.tab.Mu.Lock()
	defer e.tab.Mu.Unlock()
	for _, p := range pkts {
		msg := p.L4
		id, why, ok := checkRequest(msg, p.Proto, p.Src4, p.Dst4)
		if !ok {
			e.st.Drop(why)
			if log.Enabled(log.LevelTrace) {
				log.Tracef("ICMP: dropping %d bytes from %s to %s: %v", len(msg), p.Src4, p.Dst4, why)
			}
			continue
		}
		if !e.allowed[familyOf(p.Src4)] {
			e.st.Drop(stats.DropNoPingSocket)
			continue
		}
		key := flow.Key{Type: flow.TypeICMP, PIF: flow.PIFTap, EAddr: p.Src4, EPort: id, FAddr: p.Dst4, FPort: id}
		ref, found := e.tab.Lookup(key)
		if !found {
			if ref = e.newFlow(flow.Side{EAddr: p.Src4, EPort: id, FAddr: p.Dst4, FPort: id}, now); !ref.Valid() {
				continue
			}
		}
		f := e.tab.At(ref.Index)
		f.LastSeen = now
		f.Seen[flow.Ini] = true
		// The kernel puts in the socket's identifier and the checksum.
		if _, err := unix.Write(f.Sock[flow.Tgt], msg); err != nil {
			e.st.Drop(stats.DropSockErr)
			if log.Enabled(log.LevelDebug) {
				log.Debugf("ICMP flow %d: send: %v", ref.Index, err)
			}
			continue
		}
		e.ps.ToHost.Add(1)
		e.ps.ToHostBytes.Add(uint64(len(msg) - hdrLen))
	}
}

// newFlow makes the flow of a new echo identifier, with its ping socket
// connected to the destination. Called with the table locked.
func (e *Engine) newFlow(ini flow.Side, now int64) flow.Ref {
	// Identifiers are not ports: no DNS redirection for them.
	tgt, v := e.cfg.Rules.FromTapEcho(flow.Side{EAddr: ini.EAddr, FAddr: ini.FAddr})
	if v != fwd.OK {
		switch v {
		case fwd.BadSource:
			e.st.Drop(stats.DropBadSource)
		case fwd.BadDest:
			e.st.Drop(stats.DropMulticast)
		default:
			e.st.Drop(stats.DropNoFlow)
		}
		return flow.NoRef
	}
	idx, f, err := e.tab.Alloc()
	if err != nil {
		e.st.Drop(stats.DropTableFull)
		return flow.NoRef
	}
	f.SetIni(flow.TypeICMP, flow.PIFTap, ini)
	fd, local, err := e.connect(tgt)
	if err != nil {
		e.tab.Free(idx)
		if fam := familyOf(tgt.EAddr); errors.Is(err, unix.EACCES) && e.allowed[fam] {
			// Allowed at start, not to the user the data path runs
			// as (--runas): from now on, as if never allowed.
			e.allowed[fam] = false
			e.warn(familyName(fam) + ": " + err.Error())
			e.st.Drop(stats.DropNoPingSocket)
			return flow.NoRef
		}
		e.st.Drop(stats.DropSockErr)
		if log.Enabled(log.LevelDebug) {
			log.Debugf("ICMP: no ping socket for %s: %v", ini, err)
		}
		return flow.NoRef
	}
	tgt.FAddr, tgt.FPort = local.Addr(), local.Port()
	f.SetTgt(flow.PIFHost, tgt)
	f.Sock[flow.Tgt], f.Connected[flow.Tgt] = fd, true
	f.LastSeen = now
	if err := e.cfg.Loop.Add(fd, unix.EPOLLIN, evloop.Ref{Kind: e.kSock, Side: flow.Tgt, Index: idx, Gen: f.Gen}); err != nil {
		e.closeFlow(idx, f)
		e.st.Drop(stats.DropSockErr)
		return flow.NoRef
	}
	if err := e.tab.Activate(idx, flow.Ini); err != nil {
		e.closeFlow(idx, f)
		e.st.Drop(stats.DropNoFlow)
		return flow.NoRef
	}
	e.ps.FlowsCreated.Add(1)
	e.ps.Active.Add(1)
	if log.Enabled(log.LevelDebug) {
		log.Debugf("ICMP flow %d: new: %s", idx, f)
	}
	return flow.Ref{Index: idx, Side: flow.Ini}
}

// connect opens a ping socket bound to tgt.FAddr (an outbound address, or
// unspecified), and to the outbound device, connected to tgt.EAddr; it
// returns the local address and the identifier the kernel picked.
func (e *Engine) connect(tgt flow.Side) (int, netip.AddrPort, error) {
	v4 := tgt.EAddr.Is4()
	fd, err := e.socket(v4)
	if err != nil {
		return -1, netip.AddrPort{}, err
	}
	fail := func(err error) (int, netip.AddrPort, error) {
		unix.Close(fd)
		return -1, netip.AddrPort{}, err
	}
	if ifname := e.cfg.Rules.OutboundIf(tgt.EAddr); ifname != "" {
		if err := unix.BindToDevice(fd, ifname); err != nil {
			return fail(err)
		}
	}
	if err := unix.Bind(fd, sockaddr.From(netip.AddrPortFrom(tgt.FAddr, 0))); err != nil {
		return fail(err)
	}
	if err := unix.Connect(fd, sockaddr.From(netip.AddrPortFrom(tgt.EAddr, 0))); err != nil {
		return fail(err)
	}
	local, err := sockaddr.Local(fd)
	if err != nil {
		return fail(err)
	}
	return fd, local, nil
}

func familyOf(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return 1
}

// event reads the replies that arrived on a flow's ping socket and sends
// them to the guest.
func (e *Engine) event(r evloop.Ref, ev uint32) {
	e.tab.Mu.Lock()
	f := e.tab.At(r.Index)
	if !f.InUse() || f.Type != flow.TypeICMP || !evloop.SameGen(f.Gen, r.Gen) {
		e.tab.Mu.Unlock()
		return
	}
	fd, to := f.Sock[flow.Tgt], f.Side[flow.Ini]
	e.tab.Mu.Unlock()
	if ev&unix.EPOLLERR != 0 {
		// An ICMP error about a request (unreachable, say): the guest's
		// ping times out, as it would behind a router that says nothing.
		_, _ = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	}
	mac := e.out.GuestMAC()
	got := false
	for range recvBatch {
		n, err := unix.Read(fd, e.buf[packet.MaxHeadroom:])
		if err != nil {
			if !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) {
				e.st.Drop(stats.DropSockErr)
			}
			break
		}
		if e.toGuest(n, &to, mac) {
			got = true
		}
	}
	if got {
		e.tab.Mu.Lock()
		if f.InUse() && evloop.SameGen(f.Gen, r.Gen) {
			f.Seen[flow.Tgt] = true
		}
		e.tab.Mu.Unlock()
	}
}

// toGuest sends the reply of n bytes at buf[packet.MaxHeadroom:] to the
// guest side to (EAddr the guest, FAddr the address it pinged, EPort its
// identifier), and reports whether it did.
func (e *Engine) toGuest(n int, to *flow.Side, mac packet.MAC) bool {
	msg := e.buf[packet.MaxHeadroom : packet.MaxHeadroom+n]
	v4 := to.EAddr.Is4()
	if n < hdrLen || v4 && msg[0] != echoReply4 || !v4 && msg[0] != echoReply6 {
		e.st.Drop(stats.DropICMPType)
		return false
	}
	binary.BigEndian.PutUint16(msg[4:6], to.EPort)
	msg[2], msg[3] = 0, 0
	var start, ipLen int
	var et uint16
	if v4 {
		start, ipLen, et = packet.MaxHeadroom-packet.IPv4Len-packet.EthLen, packet.IPv4Len+n, packet.EtherTypeIPv4
		if n > 65535-packet.IPv4Len {
			e.st.Drop(stats.DropMalformed)
			return false
		}
		binary.BigEndian.PutUint16(msg[2:4], packet.Fold(packet.Sum(msg, 0)))
		packet.PutIPv4(e.buf[start+packet.EthLen:], to.FAddr, to.EAddr, packet.ProtoICMP, 64, ipLen, false)
	} else {
		start, ipLen, et = packet.MaxHeadroom-packet.IPv6Len-packet.EthLen, packet.IPv6Len+n, packet.EtherTypeIPv6
		sum := packet.PseudoSum6(to.FAddr.As16(), to.EAddr.As16(), packet.ProtoICMPv6, n)
		binary.BigEndian.PutUint16(msg[2:4], packet.Fold(packet.Sum(msg, sum)))
		packet.PutIPv6(e.buf[start+packet.EthLen:], to.FAddr, to.EAddr, packet.ProtoICMPv6, 64, n)
	}
	e.out.PutEthernet(e.buf[start:], mac, et)
	frame := e.buf[start : packet.MaxHeadroom+n]
	if v4 && e.out.NeedsFragments(ipLen) {
		if !e.out.Fragment(frame) {
			return false
		}
	} else if !e.out.WriteFrame(frame) {
		return false
	}
	e.ps.ToTap.Add(1)
	e.ps.ToTapBytes.Add(uint64(n - hdrLen))
	return true
}

// closeFlow closes the flow's socket and frees it. Called with the table
// locked.
func (e *Engine) closeFlow(idx int32, f *flow.Flow) {
	if fd := f.Sock[flow.Tgt]; fd >= 0 {
		e.cfg.Loop.Del(fd)
		unix.Close(fd)
		f.Sock[flow.Tgt] = -1
	}
	e.tab.Free(idx)
}

// expire ends flows idle for longer than the timeout.
func (e *Engine) expire(now int64) {
	e.tab.Mu.Lock()
	defer e.tab.Mu.Unlock()
	e.tab.EachOf(flow.TypeICMP, func(i int32, f *flow.Flow) {
		if now-f.LastSeen < int64(e.cfg.Timeout) {
			return
		}
		if log.Enabled(log.LevelDebug) {
			log.Debugf("ICMP flow %d: expired: %s", i, f)
		}
		e.closeFlow(i, f)
		e.ps.FlowsExpired.Add(1)
		e.ps.Active.Add(-1)
	})
}

// Release closes every ping socket; called once the loop has stopped.
func (e *Engine) Release() {
	e.tab.Mu.Lock()
	defer e.tab.Mu.Unlock()
	e.tab.Each(func(i int32, f *flow.Flow) {
		if f.Type == flow.TypeICMP {
			e.closeFlow(i, f)
		}
	})
}
