// Package stats holds gopasst's counters: per protocol, packets and bytes
// per direction and flows; frames on the tap; drops by reason.
//
// Every counter is an atomic so that the tap reader and the socket loop can
// count without sharing a lock; the hot path does one atomic add per batch
// where it can, per datagram where it must. [Counters.String] renders them
// for the exit report printed with -d.
package stats

import (
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"

	"github.com/gopasst/gopasst/internal/packet"
)

// Reason is why a frame or datagram was dropped.
type Reason uint8

// Drop reasons beyond the malformed-frame ones of package packet.
const (
	DropMalformed    Reason = iota // frame failed parsing (see Malformed)
	DropNoFlow                     // no flow could be found or created
	DropTableFull                  // flow table full
	DropSockErr                    // a socket refused the datagram
	DropTapWrite                   // writing to the tap failed
	DropMulticast                  // multicast or broadcast destination
	DropUnmappable                 // source that cannot be shown to the guest
	DropUnsupported                // protocol not handled
	DropRateLimited                // ICMP error to the guest over the rate limit
	DropFragment                   // fragments that could not be reassembled
	DropBadSource                  // source the guest cannot have: spoofed, non-unicast or port 0
	DropChecksum                   // L4 checksum wrong (where gopasst must check it)
	DropICMPType                   // ICMP message from the guest that is not handled
	DropNoPingSocket               // ICMP echo with ping sockets forbidden on the host
	DropBadSegment                 // TCP segment with a bad header, flags or options
	DropNoConn                     // TCP segment for no connection (answered with RST unless one)
	DropOutOfWindow                // TCP segment or RST outside the window
	DropOutOfOrder                 // TCP segment beyond a hole that could not be held
	NumReasons                     // number of reasons
)

var reasonNames = [NumReasons]string{"malformed", "no-flow", "table-full", "socket-error", "tap-write", "multicast", "unmappable",
	"unsupported", "rate-limited", "fragment", "bad-source", "checksum", "icmp-type", "no-ping-socket",
	"tcp-bad-segment", "tcp-no-connection", "tcp-out-of-window", "tcp-out-of-order"}

// String names the reason.
func (r Reason) String() string {
	if r < NumReasons {
		return reasonNames[r]
	}
	return "unknown"
}

// Proto are the counters of one protocol. What a packet is (a datagram,
// an echo request, a segment) depends on the protocol.
type Proto struct {
	ToHost       atomic.Uint64 // packets from the guest sent to host sockets
	ToHostBytes  atomic.Uint64 // their payload bytes
	ToTap        atomic.Uint64 // packets from host sockets written to the tap
	ToTapBytes   atomic.Uint64 // their payload bytes
	Spliced      atomic.Uint64 // packets moved socket to socket (splice, replies to listeners)
	SplicedBytes atomic.Uint64 // their payload bytes
	FlowsCreated atomic.Uint64 // flows created
	FlowsExpired atomic.Uint64 // flows ended
	Active       atomic.Int64  // flows alive now
	ActiveSplice atomic.Int64  // of which socket to socket (splice)
}

// Counters are the process-wide counters.
type Counters struct {
	TapRxFrames atomic.Uint64 // frames read from the tap
	TapTxFrames atomic.Uint64 // frames written to the tap
	UDP         Proto
	ICMP        Proto // ICMP echo: requests to the host, replies to the guest
	TCP         Proto // TCP: segments with payload each way, connections
	// TCPRetransmits counts retransmissions to the guest (timeouts and
	// fast retransmits), TCPResets RSTs sent to the guest.
	TCPRetransmits, TCPResets atomic.Uint64
	ICMPToGuest               atomic.Uint64 // ICMP errors sent to the guest
	FragmentsIn               atomic.Uint64 // IP fragments from the guest
	Reassembled               atomic.Uint64 // datagrams reassembled from them
	L2Replies                 atomic.Uint64 // ARP and NDP replies sent
	TCPHeld                   atomic.Uint64 // the guest's TCP segments held beyond a hole
	// TCPSuperseded counts connections ended, short of the guest's
	// last ACK, for a new connection from the host with their ports.
	TCPSuperseded atomic.Uint64

	Drops     [NumReasons]atomic.Uint64
	Malformed [packet.NumDrops]atomic.Uint64
}

// Drop counts one drop for reason r.
func (c *Counters) Drop(r Reason) { c.Drops[r].Add(1) }

// DropFrame counts a frame that failed parsing with reason d.
func (c *Counters) DropFrame(d packet.Drop) {
	c.Drops[DropMalformed].Add(1)
	c.Malformed[d].Add(1)
}

// String renders all counters, one "name: value" per line, and ends with
// the number of goroutines.
func (c *Counters) String() string {
	var b strings.Builder
	line := func(name string, v any) { fmt.Fprintf(&b, "%s: %v\n", name, v) }
	line("tap frames in", c.TapRxFrames.Load())
	line("tap frames out", c.TapTxFrames.Load())
	u := &c.UDP
	line("udp datagrams to host", u.ToHost.Load())
	line("udp bytes to host", u.ToHostBytes.Load())
	line("udp datagrams to tap", u.ToTap.Load())
	line("udp bytes to tap", u.ToTapBytes.Load())
	line("udp datagrams socket to socket", u.Spliced.Load())
	line("udp bytes socket to socket", u.SplicedBytes.Load())
	line("icmp errors to guest", c.ICMPToGuest.Load())
	line("ip fragments in", c.FragmentsIn.Load())
	line("ip datagrams reassembled", c.Reassembled.Load())
	line("l2 replies", c.L2Replies.Load())
	line("udp flows created", u.FlowsCreated.Load())
	line("udp flows expired", u.FlowsExpired.Load())
	line("udp flows active", u.Active.Load())
	line("udp flows active (tap)", u.Active.Load()-u.ActiveSplice.Load())
	line("udp flows active (splice)", u.ActiveSplice.Load())
	i := &c.ICMP
	line("icmp echo requests to host", i.ToHost.Load())
	line("icmp bytes to host", i.ToHostBytes.Load())
	line("icmp echo replies to tap", i.ToTap.Load())
	line("icmp bytes to tap", i.ToTapBytes.Load())
	line("icmp flows created", i.FlowsCreated.Load())
	line("icmp flows expired", i.FlowsExpired.Load())
	line("icmp flows active", i.Active.Load())
	tc := &c.TCP
	line("tcp segments to host", tc.ToHost.Load())
	line("tcp bytes to host", tc.ToHostBytes.Load())
	line("tcp segments to tap", tc.ToTap.Load())
	line("tcp bytes to tap", tc.ToTapBytes.Load())
	line("tcp retransmits to tap", c.TCPRetransmits.Load())
	line("tcp segments held out of order", c.TCPHeld.Load())
	line("tcp resets to tap", c.TCPResets.Load())
	line("tcp connections superseded", c.TCPSuperseded.Load())
	line("tcp connections created", tc.FlowsCreated.Load())
	line("tcp connections closed", tc.FlowsExpired.Load())
	line("tcp connections active", tc.Active.Load())
	line("tcp connections active (splice)", tc.ActiveSplice.Load())
	line("tcp bytes socket to socket", tc.SplicedBytes.Load())
	for r := Reason(0); r < NumReasons; r++ {
		line("drop "+r.String(), c.Drops[r].Load())
	}
	for d := packet.Drop(1); d < packet.NumDrops; d++ {
		line("malformed "+d.String(), c.Malformed[d].Load())
	}
	// Not a counter, but what a leak would show first; the soak tool
	// (internal/e2e/soak) watches it, and a dump ends with it.
	line("goroutines", runtime.NumGoroutine())
	return b.String()
}
