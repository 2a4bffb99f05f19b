// Package autoscan implements the "auto" port forwarding mode of pasta
// (-t/-u/-T/-U auto): a port is forwarded only while something on the other
// side is bound to it, as found by reading the kernel's socket tables in
// procfs once a second.
//
// # What counts as bound
//
// The reference reads /proc/net/udp and /proc/net/udp6 (and tcp, tcp6) of
// the side the traffic is forwarded to: for -u and -t the namespace's
// tables, for -U and -T the host's (init namespace's) tables. A UDP socket
// counts when its state is 07 (TCP_CLOSE, which for UDP means bound and not
// connected); connected UDP sockets have state 01 (TCP_ESTABLISHED) and do
// not count, because they only accept datagrams from their one peer, so a
// forwarded datagram from anywhere else would never reach them. A TCP socket
// counts when it is listening (state 0A, TCP_LISTEN). The reference also
// forwards a UDP port when a TCP socket listens on that number (for
// protocols such as iperf3 that negotiate a UDP port of the same number over
// TCP); [OpenTables] and [OpenDiag] with both udp and tcp set reproduce
// that. For TCP forwarding only listening TCP sockets count (tcp alone).
//
// The local address of a socket does not matter, again like the reference:
// a socket bound to the wildcard address, to loopback or to one particular
// address all make the port count, and an IPv6 socket makes the port count
// for IPv4 rules too (the man page: "IPv6 bound ports are also forwarded for
// IPv4"). Depending on the address and on how the datagram is forwarded
// (spliced to loopback or sent over the tap device to the namespace's
// address) it may or may not reach the socket, but some path generally does
// and the reference keeps it simple; [Socket] carries the address anyway for
// callers that want to be stricter. Kernel sockets (WireGuard, VXLAN,
// sunrpc...) have inode 0 but are real receivers and do count.
//
// # Why every second
//
// The kernel offers no notification of sockets being bound in another
// process, so the tables are polled. The reference rescans every
// FWD_PORT_SCAN_INTERVAL, 1000 ms, from its timer handler; a newly bound
// port therefore becomes reachable from the other side within about a
// second, and a port stops being forwarded about a second after it is
// closed. [Scanner.Step] is meant to be called from a one-second ticker.
//
// # Why inodes
//
// gopasst binds sockets itself: the listeners opened for forwarded ports and
// the per-flow reply sockets bound to kept source ports. Those appear in the
// same tables. If they counted, forwarding host port P into the namespace
// (gopasst listens on host P) would make the host's table show P, which
// would make the reverse direction forward namespace port P back to the host,
// and so on: a loop that keeps itself alive after the application that
// started it has gone. The reference prevents this by ignoring, for each
// scan, the port numbers it listens on itself in the opposite direction.
// This package identifies gopasst's own sockets precisely instead: every
// socket has a sockfs inode number, shown in the "inode" column of the
// tables and in sock_diag's answers, and as st_ino of fstat on the
// descriptor ([FDInode], [Inode]). Socket inodes are global, not per
// namespace, so one record covers the sockets gopasst holds in both
// namespaces: the UDP engine notes the inode of every socket it opens, from
// before its bind, and forgets it when it closes the last descriptor
// (udp.Engine.OwnInodes). An earlier version read /proc/self/fd at every
// scan, which cost a system call per descriptor: with 10,000 flows, more
// than the data path. Unlike port-based
// exclusion, a port that some other process also binds (say with
// SO_REUSEADDR, which the reference sets on all its sockets) still
// counts.
//
// Reading the tables and the record is not atomic, and gopasst opens and
// closes sockets concurrently with the scan, so [Scanner.Step] reads the
// table, then the record, then the table again, and only trusts sockets
// seen (same inode, same port) in both reads: such a socket existed during
// the whole time the record was read, so if it is gopasst's it was found
// there. A socket seen in one read only counts at
// the next scan if it is still there, one second later. This covers, for
// instance, a per-flow socket caught between its bind() and connect(),
// when it is briefly bound and unconnected; the reference, single-threaded,
// can never observe that window.
package autoscan
