// Package ctl is gopasst's run-time control socket (-c, --conf-path): a
// UNIX stream socket on which the user who started gopasst lists, adds
// and deletes forwarding rules, lists the flows and reads the counters,
// while gopasst runs. It speaks the protocol of upstream passt's "pesto"
// client (version 2), so that pesto works against gopasst, and a small
// versioned extension of gopasst's own for what pesto cannot ask.
//
// # Theory of operation
//
// The socket is bound before the sandbox (the path will not resolve
// after it), mode 0600, and served on a goroutine of its own, one client
// at a time; others wait in the backlog, and a client that stalls is
// dropped after 10 seconds. Only the user that started gopasst may
// connect: besides the file's mode, the client's SO_PEERCRED user (as
// gopasst's user namespace sees it) must be the one gopasst had at
// start; others are closed at once, counted, and logged the first time.
//
// The server keeps the forwarding tables as rules in the command line's
// syntax (conf.PortRule), each with the listening sockets opened for it:
// HOST (-t, -u: host ports towards the guest) and, in pasta with its
// splice path, SPLICE (-T, -U: the namespace's loopback towards the
// host). A change is computed as the difference between the old and the
// new table: rules that stay keep their sockets and their flows are not
// disturbed at all; rules that go have their listening sockets closed
// (engine.Engine.RemoveForward), and the flows they started are left to
// finish or expire (a TCP connection lives until either side closes it;
// a UDP flow until its timeout, its datagrams from the guest still going
// out, while the port is read no more); new rules get their listening
// sockets opened (engine.Engine.AddForward). A change is all or nothing:
// a rule that is malformed, overlaps another, or whose port cannot be
// bound (in use, say) undoes whatever the change had done, and the
// tables stay as they were. "auto" rules (pasta's default) are fixed at
// start: a change that adds or removes one is refused. Port
// specifications are parsed by package conf, exactly as on the command
// line.
//
// The flow table is read under its lock (flow.Table.Mu), which the tap
// reader and the event loop hold whenever they touch flows; the counters
// are atomics. Listening sockets are opened and closed on the event
// loop's thread (the protocols' AddForward runs there through
// evloop.Loop.Do).
//
// # The pesto protocol (version 2)
//
// All integers are big-endian. On connecting, the client receives:
//
//	hello:  "basil:s\0" (8 bytes), version (u32, 2),
//	        pif name size (u32, 128), IFNAMSIZ (u32, 16)
//	tables: per table: pif (u8, 1 HOST or 3 SPLICE), name (128 bytes,
//	        NUL-terminated), capabilities (u32), rule count (u32),
//	        rules; then a pif of 0
//	rule:   listening address (16 bytes, IPv6 or IPv4-mapped), target
//	        address (16, "::" for none), interface (16, NUL-terminated),
//	        first port, last port, target of the first port (u16 each),
//	        IP protocol (u8, 6 or 17), flags (u8: 1 any address of both
//	        families, with "::"; 2 best effort; 4 auto)
//
// Capabilities are 1 IPv4, 2 IPv6, 4 TCP, 8 UDP, 16 auto, 32 interface
// binding. A client that only looks closes the connection. A client that
// changes the rules sends, per table, its pif (u8), its new rule count
// (u32) and all its rules, then a pif of 0: each table sent is replaced
// by what was sent (pesto sends every table; gopasst leaves a table that
// is not sent as it is). pesto gets no answer; gopasst logs the outcome.
// On the SPLICE table, a rule on the wildcard address is bound to
// interface "lo" on the wire (as upstream's rules are), and gopasst's
// -T and -U rules name no interface; the two are translated.
//
// # The gopasst extension (version 1)
//
// Where a client would send a pif, it may instead send the byte 0xff (no
// pif has it, so upstream refuses it and closes), then
//
//	"gopasst\0" (8 bytes), extension version (u32, 1), op (u8),
//	argument length (u32, at most 4 KiB), argument (UTF-8)
//
// and it receives
//
//	"gopasst\0", extension version (u32), status (u8: 0 done,
//	1 refused), text length (u32, at most 64 MiB), text (UTF-8: the
//	output, or a one-line reason)
//
// Ops: 1 add and 2 delete the rules of the argument, an option and its
// port specification as on the command line ("-t 8080", "-u 5353:53",
// "-T 9000"; a deletion must name rules exactly as they are); 3 lists
// the flows and 4 dumps the counters (as SIGUSR1 does), both without an
// argument; 5, sent right after a pesto update on the same connection,
// reports whether the update was applied. A server that speaks an
// older extension version refuses a newer request with a reason; a
// future version may add ops, which older servers refuse the same way.
package ctl
