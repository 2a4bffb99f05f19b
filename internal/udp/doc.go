// Package udp translates UDP between the guest's frames and host sockets,
// following the flow-table design of the reference implementation.
//
// # Theory of operation
//
// UDP has no connections, but most protocols behave as if it had: a client
// sends from a port of its choosing to a server's port and the server
// answers from that port to the client's. Each such exchange is a flow (see
// package flow), created by its first datagram, refreshed by traffic in
// either direction, and expired after a quiet period: the host's
// nf_conntrack_udp_timeout (30 s) while only one side has spoken, and
// nf_conntrack_udp_timeout_stream (120 s) once both have.
//
// Guest to host. The tap reader hands [Engine.HandleTap] a batch of parsed
// UDP frames. Consecutive frames with the same addresses and ports form one
// group, looked up once in the flow table. A group that starts a new flow
// gets a reply socket: a host socket bound to the guest's source port where
// that port is free (an ephemeral one otherwise) and connected to the
// destination, which is the destination the guest used, or the host's
// loopback when it used its gateway address (package fwd). The group's
// payloads go out in one sendmmsg, straight from the frame buffers.
//
// Host to guest. [Engine.Run] is an epoll loop over two kinds of sockets,
// blocking its thread in epoll_wait (package yield tells why).
// Listening sockets, one per forwarded port (-u) and address family, can
// carry datagrams of many flows: each datagram is looked up by its source in
// the flow table, and a new flow keeps a duplicate of the listening socket
// to send replies from, so it outlives the listener. Reply sockets are
// connected, so the kernel already sorted their datagrams by flow and the
// epoll event names the flow directly. Either way recvmmsg writes payloads
// [packet.MaxHeadroom] bytes into preallocated buffers and the Ethernet, IP
// and UDP headers are written in front of them, so a payload is copied only
// by the kernel.
//
// Offloads (see gso_linux.go). With Config.Offload, datagrams of one flow
// that follow each other with the same size (the last may be shorter) go to
// a socket as one message with UDP_SEGMENT, so the host's stack handles a
// run of up to 64 datagrams as one packet; sockets receive with UDP_GRO
// when the endpoint takes segmented frames, and a run received whole, or
// a run of equal-size datagrams from one recvmmsg, reaches the guest as one
// segmented frame. A kernel or route that refuses to segment gets the
// datagrams one by one; a run for a guest that cannot take it is split.
//
// Multicast and broadcast. A flow has two unicast ends, so datagrams
// from the guest to a multicast or broadcast address are not forwarded:
// sending them from a host socket would put the guest's mDNS, SSDP or LLMNR
// chatter on the host's network. They are dropped and counted ("drop
// multicast"); DHCP and DHCPv6, the broadcast and multicast the guest
// needs, are answered before UDP sees them (package dhcp).
//
// ICMP errors. Reply sockets of flows the guest started read their error
// queue (IP_RECVERR): an ICMP error for a datagram the guest sent is
// translated into the ICMP or ICMPv6 error its kernel would have got,
// quoting the datagram as the guest sent it, so a connected socket in the
// guest sees ECONNREFUSED (see icmp_linux.go).
//
// Concurrency. The tap reader and the epoll loop may run on goroutines of
// their own (passt's qemu socket; pasta's tap runs both on the loop's
// thread, see package engine) and share the flow table under one mutex,
// taken once per batch.
// Only the epoll loop closes sockets and frees flows (expiry runs there), so
// it may use a flow's socket outside the lock once it has checked, under the
// lock, that its event still names a live flow; the tap reader sends under
// the lock, so a socket cannot be closed under it.
package udp
