// Package tcp carries the guest's TCP connections over ordinary host
// sockets, the reference's way: the host kernel does the real TCP with the
// far peer, and gopasst only keeps sequence and acknowledgement numbers
// towards the guest, advertises a window and retransmits. There is no TCP
// stack here: no congestion control, no send buffer of our own, and no
// reassembly buffer beyond a bounded hold for segments that arrive after a
// hole.
//
// # Theory of operation
//
// Every connection is a flow (package flow) of type TCP with a tap side
// and a host side, and a conn beside it with the state towards the guest.
//
// Opening. A SYN from the guest opens a non-blocking host socket towards
// the destination that package fwd gives (the gateway is the host's
// loopback, and so on), with TCP_MAXSEG clamped to the guest's MSS. The
// guest's SYN retransmissions are absorbed while it connects; the SYN-ACK
// goes to the guest only once the connect succeeded. A refused connect is
// answered with RST; an unreachable destination with the ICMP or ICMPv6
// "host unreachable" error a router would send, so that the guest's
// connect fails with EHOSTUNREACH at once instead of ECONNREFUSED (the
// reference sends RST for both). A connection accepted on a -t listener
// sends a SYN to the guest, from the client's address (the host's
// loopback and own addresses appear as the address that stands for the
// host); the guest's SYN-ACK establishes it, its RST or silence after the
// SYN's retries resets the client.
//
// Host to guest. The host socket's receive queue is our send buffer:
// data is read with MSG_PEEK from the offset of what is in flight
// (SO_PEEK_OFF; without it, a discard buffer takes the bytes in flight
// first), cut into segments of the guest's MSS, and dropped from the
// queue with MSG_TRUNC once the guest acknowledged it. Retransmission
// rewinds the offset to the oldest unacknowledged byte. The loop waits
// for EPOLLIN only while the guest's window has room, so a full window
// costs no wake-ups.
//
// Guest to host. The in-order payloads of a batch of the guest's segments
// for one connection go out in one sendmsg(2), also what lies beyond the
// window last advertised (the guest may have sent it under a wider one);
// a full send buffer or a partial write acknowledges only what the socket
// took. The window the guest sees is what the host socket's send buffer
// can still take: with little queued, three quarters of its free room;
// beyond a quarter of it full, the free memory SO_MEMINFO reports, turned
// into payload at the rate of payload to memory the queue shows (small
// segments to a slow peer cost more memory per byte). It is rounded to
// nothing below one segment so the guest sends no silly segments; when it
// is that small, EPOLLOUT on the socket sends the window update, followed
// by three duplicates of it if the socket had refused data, so that the
// guest retransmits at once rather than on its timeout.
//
// Out of order. Segments beyond a hole (the namespace's kernel lost some
// to a full tap queue and retransmits, sending new data beyond as F-RTO
// does) are answered with a duplicate ACK for the hole, as the reference
// does, and, unlike the reference, kept: a copy, up to 64 segments and 4
// MiB per connection and 16 MiB in all (see ooo.go), joins the stream
// once the hole is filled. Dropping them would leave the guest to find
// them lost on its next timeout, doubled each time as retransmitted data
// gives it no RTT sample: one burst of losses on the tap grew into
// stalls of many seconds. Where the guest permits SACK in its SYN (or
// SYN-ACK: our SYN offers it), our ACKs carry what is held as SACK blocks
// (RFC 2018, up to four, the latest first), so that the guest resends
// only the holes, at once, instead of finding them on a timeout; what
// the guest's own SACK blocks say of our data is ignored (we resend from
// the first byte not acknowledged, which SACK allows).
//
// Offloads. On a tap with TSO (TUN_F_TSO4/6), the guest's TCP segments
// come up to 64 KiB whatever the MTU, and socket data goes to it as GSO
// frames of up to 64 KiB with gso_size the guest's MSS and a partial
// checksum; without them (passt mode, --no-offload) each segment is one
// frame of at most the MSS.
//
// Sequence numbers. Our initial sequence number towards the guest is a
// keyed hash of the four-tuple plus a clock ticking every 64 ns (RFC
// 6528), so a new connection starts above an older one of the same
// ports and a guest holding that one in TIME-WAIT takes the new SYN. If
// it answers with an ACK of the old connection instead, that ACK gets
// the RST RFC 9293 asks for, which ends the old connection, and our SYN's
// retransmission opens the new one.
//
// Timers. What the guest has not acknowledged within the retransmission
// timeout is sent again, the timeout doubling per retry up to 8 retries,
// then both sides are reset. The timeout comes from round trips measured
// as RFC 6298 asks (the handshake's, then one segment per flight, none
// that was sent again): at least 200 ms, 1 s before any sample. With
// nothing in flight and the guest's window shut, the persist timer probes
// the window at the same intervals, as the guest's window update may have
// been lost. Both run on a loop timer armed for the earliest deadline, so
// a loss on the tap costs a fifth of a second, not the one to two seconds
// of the loop's once-a-second tick. The tick retransmits SYNs and
// SYN-ACKs (1 s, doubling, 3 retries), repeats our window update if the
// guest may have missed it, gives up a host connect after 10 s, and
// resets connections idle for 2 hours. Three duplicate ACKs from the
// guest retransmit at once.
//
// Endings. The guest's FIN becomes shutdown(SHUT_WR) on the host socket
// and the host's data keeps flowing; end of file on the host socket
// becomes a FIN to the guest after the last data. When both FINs are
// acknowledged the socket is closed and the flow freed. The guest's RST
// closes the socket with a zero linger, so the peer sees a reset; a reset
// from the peer becomes a RST to the guest. A keepalive probe from the
// guest turns SO_KEEPALIVE on for its connection.
//
// Bad input. A segment that fails parsing (short, a port of 0, a data
// offset or option past its end, impossible flags) is counted and
// dropped. A segment for no
// connection is answered with RST (RFC 9293 3.10.7.1), never a RST; a RST
// is accepted only at the exact next sequence number, and one inside the
// window, or a SYN on an open connection, gets a challenge ACK (RFC 5961).
// New connections count against --max-flows with every other flow.
//
// Both paths of the engine (the tap reader and the host loop, on one
// thread or two, see package engine) hold the flow table's lock while they
// touch a connection.
package tcp
