// Command udptool is a small UDP test program used by the end-to-end tests
// of gopasst.
//
// It has three subcommands:
//
//	udptool echo -l ADDR:PORT [-count N] [-timeout D] [-v]
//	udptool send -to ADDR:PORT [-from ADDR:PORT] [-size N] [-count K]
//	             [-echo] [-connect] [-flows F] [-wait D] [-interval D] [-timeout D]
//	udptool recv -l ADDR:PORT [-count K] [-timeout D]
//
// Addresses are numeric literals: "127.0.0.1:7000", "[::1]:7000",
// "[::]:7000". An IPv4 literal selects an IPv4 socket, an IPv6 literal an
// IPv6-only socket.
//
// Every datagram sent by "send" has deterministic content: a 16-byte header
// ("GPUT" magic, big-endian uint32 flow id and sequence number, uint16 total
// length and uint16 check value over the other fields) followed by a
// pseudo-random pattern seeded from flow id, sequence number and length.
// Datagrams shorter than 16 bytes carry a prefix of the header. "recv"
// verifies received datagrams against this pattern, and "send -echo"
// compares each echo byte-for-byte with what it sent.
//
// "echo" and "recv" print a line "listen ADDR:PORT" with the bound address
// (useful with port 0) followed by a line consisting of exactly "ready" once
// the socket is bound. "echo" replies from the address the datagram was sent
// to, even when bound to a wildcard address (IP_PKTINFO/IPV6_PKTINFO), so a
// client can check the source of echoes.
//
// Output is line-oriented JSON on stdout; failures print one line
// "udptool: ..." on stderr and exit with status 1 (2 for usage errors).
package main
