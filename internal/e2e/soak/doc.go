// Command soak runs gopasst in pasta mode for a while under churn and
// checks that it stays healthy:
//
//	go run ./internal/e2e/soak -duration 10m
//
// It needs root: like the end-to-end tests it builds a sandbox (package
// sandbox: a host and a world network namespace joined by a veth pair) and
// runs gopasst in the host namespace, so no datagram can leave the machine.
//
// # Load
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
// # Checks
//
// Every -interval the controller samples gopasst: descriptors
// (/proc/PID/fd), threads and resident memory (/proc/PID/status), and its
// own counters, goroutines included (SIGUSR1). After the warm-up, the
// last third of the samples must not exceed the first third beyond the
// tolerances in resident memory, threads, goroutines and descriptors not
// held by live flows (the raw count of descriptors follows the load, and
// the load the CPU time the machine spares). When the load stops, every flow must expire within the flow
// timeout (--udp-timeout, 2 s by default) with all its sockets: no active
// flows, as many expired as created, descriptors and goroutines back at
// their idle values. No datagram may be corrupt; lost ones are counted,
// and a path may lose at most -max-loss of its datagrams. gopasst must
// count every malformed frame under its reason and exit cleanly. The
// program prints the samples, per-path figures and a summary, and exits
// with status 1 if any check failed (2 if no sandbox can be made here).
package main
