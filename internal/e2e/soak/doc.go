// Command soak runs gopasst in pasta mode for a while under churn and
// checks that it stays healthy:
//
//	go run ./internal/e2e/soak -duration 10m
//	go run ./internal/e2e/soak -duration 10m -proto tcp -mtu 1500,0
//
// It needs root: like the end-to-end tests it builds a sandbox (package
// sandbox: a host and a world network namespace joined by a veth pair) and
// runs gopasst in the host namespace, so no datagram can leave the machine.
//
// -proto picks the protocols of the load (udp, tcp, or both, the
// default); -mtu takes a list, and runs one gopasst per MTU at once, each
// in its own sandbox with its own agents (0 is gopasst's default, 65520).
//
// # UDP load
//
// Three agents (this program again, with the hidden "agent" subcommand)
// start short flows, one after the other on each of 12 paths, both IP
// versions each:
//
//   - from the namespace (the command gopasst runs): to the gateway
//     address (through the tap to the host's loopback), to a world
//     address (through the tap and the host's uplink), and to its own
//     loopback on a -U port (splice to the host's loopback);
//   - from the host namespace: from its loopback to a -u port (splice),
//     and from its own address to the same port (through the tap);
//   - from the world namespace: to the host's address on the -u port
//     (through the tap, with the world's address as the source).
//
// A flow is a new socket on a new source port that sends one to four
// datagrams of random sizes (1 to 65000 bytes; with the default MTU of
// 1500 the large ones are fragmented by the namespace's kernel toward
// gopasst and by gopasst toward the namespace) and waits for each echo.
// Every datagram checks itself (a CRC-32C over all its bytes, see
// payload.go); echo servers drop and count datagrams that fail the check,
// clients compare each echo byte for byte with what they sent. Meanwhile
// the namespace's agent writes malformed frames of known kinds and a few
// fragments that never complete to the tap through a packet socket.
//
// # TCP load
//
// The same agents run TCP servers and clients (tcp.go) on 12 paths: from
// the namespace to the gateway (tap, to the host's loopback), to a world
// address (tap, through the uplink), to its loopback on the -T port
// (splice to the host's loopback); from the host's loopback to the -t
// port (splice to the namespace) and from its own address to it (tap);
// from the world to the host's address on the -t port (tap); IPv4 and
// IPv6 each. A connection starts with a header that tells the server
// what to do, drawn at random: a short exchange (a small request, a small
// response, close), a bulk transfer (up to 8 MiB each way at once), a
// half-close by the client (it shuts its write side, the server answers
// after the end of file) or by the server (it sends and shuts its side
// first, the client sends after the end of file), a reset by the client
// or by the server (close with a zero linger in the middle of the
// transfer; the other side must see ECONNRESET, not an end of file), or a
// slow reader on either side (small reads with pauses: the window fills).
// Each direction is a pseudo-random stream seeded by the connection and
// the direction, verified byte for byte as it is read; the server ends
// with a trailer telling how many of the client's bytes it got intact.
// The namespace's clients draw their ports from an ephemeral range of
// their own, since gopasst binds a spliced client's port on the other
// side; the host's and the world's clients bind a few ports below it in
// turn, so that a four-tuple comes back within seconds, while the
// namespace may still hold it in TIME_WAIT (see tcpPortsFrom). The
// injector also writes TCP segments with a bad checksum,
// a data offset outside the segment, impossible flags or a cut header,
// and segments for no connection, which gopasst must count under "drop
// checksum", "drop tcp-bad-segment" and "drop tcp-no-connection".
//
// # Checks
//
// Every -interval the controller samples gopasst: descriptors
// (/proc/PID/fd), threads and resident memory (/proc/PID/status), and its
// own counters, goroutines included (SIGUSR1). After the warm-up, the
// last third of the samples must not exceed the first third beyond the
// tolerances in resident memory, threads, goroutines and descriptors not
// held by live flows and connections (the raw count of descriptors
// follows the load, and the load the CPU time the machine spares). When
// the load stops, every TCP connection must close (opened as many as
// closed, none active) and every flow must expire within the flow
// timeout (--udp-timeout, 2 s by default) with all its sockets: no active
// flows, as many expired as created, descriptors and goroutines back at
// their idle values. No datagram and no TCP byte may be corrupt; lost
// datagrams are counted, and a path may lose at most -max-loss of them;
// every TCP connection must end as its mode says (no failed connect, no
// early end of file, no reset that arrives as an end of file, no
// timeout). gopasst must
// count every malformed frame under its reason and exit cleanly. The
// program prints the samples, per-path figures and a summary, and exits
// with status 1 if any check failed (2 if no sandbox can be made here).
package main
