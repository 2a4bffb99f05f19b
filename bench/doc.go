// Command bench measures gopasst against the reference pasta (the passt
// package of the distribution, /usr/bin/pasta) side by side, on the same
// machine, in one run, and prints a markdown table of medians and ratios.
//
//	sudo go run ./bench [-reps 3] [-dur 1.5s] [-run REGEXP] [-o table.md] [-json trials.json]
//	sudo go run ./bench -quick        # a smoke test: short trials, one repetition
//	sudo go run ./bench -list         # the scenario names -run selects from
//
// # Set-up
//
// Everything runs inside a sandbox of internal/e2e/sandbox: a "host"
// network namespace (192.0.2.2/24, 2001:db8::2/64, default routes to a
// "world" namespace at the other end of a veth pair). Each trial starts
// fresh instances: as an unprivileged user (-user, default gopasst-test;
// the reference refuses to run as root), inside the host namespace,
// "unshare --user --map-root-user --net sleep infinity" holds a new
// namespace, and the translator attaches to it exactly as a user would:
//
//	gopasst pasta --config-net -f -q -t none -T none -u 10001 -U 10002 PID
//	pasta         --config-net -f -q -t none -T none -u 10001 -U 10002 PID
//
// The TCP scenarios (tcp/…) forward TCP ports too, "-t 10011 -T 10012"
// in place of "-t none -T none", for both translators; the UDP scenarios
// run without TCP forwarding, as before.
//
// A third translator, the variant "gopasst --no-offload", runs exactly like
// gopasst with that option added (plain tap frames, no UDP_SEGMENT or
// UDP_GRO on its sockets), in the scenarios that ask for it: the tap
// goodput scenarios, plain and segmenting. It shows what the tap offloads
// give, and that senders which do not segment lose nothing with them on.
// -no-offload=false leaves it out.
//
// Two kernel baselines run as "translators" that are no program (see
// veth.go): "veth", a veth pair from the sandbox's host namespace into
// the namespace, no translator, kernel routing, with the MTU the
// translators give the namespace (65520, or 1500 in the -mtu1500
// scenarios), in the TCP tap scenarios and the ping ones; "loopback",
// both ends in the namespace over its loopback, in the TCP splice
// scenarios (the translators join two loopback sockets there). The
// namespace is held by the user as for the translators; the load tools
// and their options are the same but for the addresses (see Paths).
// They show what the kernel does on the same machine in the same run;
// -veth=false leaves them out.
//
// A trial starts measuring only when the namespace has its routes and a
// usable IPv6 address, both ends of the forwarded ports are bound, and the
// namespace has resolved its gateways (ARP, NDP). Duplicate address
// detection is off in the namespace (the reference sends to the
// namespace's link-local address, which it learns from its first packet).
//
// The load comes from this binary, re-executed as one of its load tools
// (see loadMain): a flooding sender (sendmmsg as fast as the kernel
// accepts), a segmenting flooding sender (sendmsg of 47 datagrams of 1372
// bytes at a time, 64,484 bytes, with a UDP_SEGMENT control message, as
// QUIC stacks send), a paced sender, a counting sink (recvmmsg; a datagram
// counts if its size, magic and every payload byte are right; optionally
// with UDP_GRO, splitting each message it receives at the segment size the
// kernel reports and checking every segment as a datagram of its own), an
// echo server, a request/response client and a many-flows sender; for
// TCP, a stream sender, a verifying stream sink, an echo server, a
// request/response client, a connecting client with a server that
// accepts and closes, and a client that opens many connections with a
// server that answers and keeps them (see tcpTools); a stream sender
// over several connections at once; a pinger (ICMP echo requests from an
// unprivileged ping socket, see runPing). Tools on the host side
// run in the sandbox's host namespace; tools on the guest side run in the
// translator's namespace under nsenter(1), as root. Every destination is a
// loopback address or one of the sandbox's documentation addresses
// (192.0.2.0/24, 2001:db8::/32), which the tools check (the TCP tools
// too, before every connect): no datagram can leave the machine.
//
// # Paths
//
//   - tap ns→host: the namespace sends to its gateway address, which both
//     translators map to the host's loopback; the sink listens on the
//     host's loopback (port 10003).
//   - tap host→ns: the host sends to its own address 192.0.2.2 or
//     2001:db8::2, port 10001 (-u): the translator's listening socket sees
//     a non-loopback source and writes to the tap.
//   - splice ns→host: the namespace sends to its loopback, port 10002 (-U).
//   - splice host→ns: the host sends to its loopback, port 10001 (-u).
//
// TCP takes the same four paths, with ports of its own: tap ns→host, the
// namespace connects to its gateway, port 10013, where the sink listens
// on the host's loopback; tap host→ns, the host connects to 192.0.2.2 or
// 2001:db8::2, port 10011 (-t); splice ns→host, the namespace connects to
// its loopback, port 10012 (-T); splice host→ns, the host connects to its
// loopback, port 10011 (-t). A trial of a TCP scenario starts only once
// the translator listens on 10011 on the host and on 10012 in the
// namespace, IPv4 and IPv6 (the reference listens on the host with one
// dual-stack socket).
//
// Ping takes the tap ns→host path: the namespace sends echo requests to
// its gateway, which both translators map to the host's loopback (the
// reference of 2023 does not: it sends them on to the gateway address,
// the sandbox's world namespace, which answers; its ping trials fail the
// path check). The translators answer them from ping sockets on the
// host, which need the user's group in net.ipv4.ping_group_range: the
// bench sets it in the sandbox's host namespace for the run and restores
// it at the end (a new namespace has "1 0"); the pinger, root in the
// namespace, has the trial's namespace opened to group 0.
//
// The kernel baselines take the same paths with other addresses. Over
// the veth pair (192.0.2.129/30 and 2001:db8:2::1/64 at the host's end,
// 192.0.2.130 and 2001:db8:2::2 at the namespace's) the namespace
// connects (and pings) to the host end's address, where the server
// listens, in place of the gateway and the host's loopback; the host
// connects to the namespace end's address in place of its own. The
// IPv4 /30 lies inside the host's 192.0.2.0/24 and is routed to the pair
// as the more specific prefix. Over the loopback, both ends run in the
// namespace, at the translators' loopback addresses and ports. The path
// checks read the namespace's end of the veth pair as they read the tap
// device (the loopback baseline, with no other device, passes the
// splice check).
//
// Every trial checks that the traffic took the path it was meant to: the
// namespace's tap device must have carried at least (nearly) as many
// bytes as reached the receiver on the tap paths, and under 1% of that on
// the splice paths (for goodput and flows trials, over the receiver's
// whole life, so that a receiver that falls behind, or counters read late
// on a busy machine, do not spoil the comparison). Trials that fail this,
// receive datagrams of the wrong size or content, or fail at all, are
// listed under the table and make the exit status 1. TCP trials check
// the same; the TCP request/response and connection trials, which move
// almost no payload, check the tap bytes against the least the tap must
// carry if the path is right: two segments of 54 bytes (Ethernet, IPv4
// and TCP headers) per transaction, four (SYN, SYN-ACK and two FINs) per
// connection, warm-up included; for the many-connections trials, six per
// connection (the request and the answer too) and their payload.
//
// # Measurements
//
//   - Goodput: the flooding sender runs for -warmup, then for -dur the
//     sink's intact payload bytes are counted (payloads of 1372 and 65000
//     bytes, IPv4 and IPv6, four paths). Sender, translator and sink share
//     the machine's cores, as they would in real use. The tap paths also
//     run with gopasst --no-offload.
//   - Goodput with a segmenting sender (goodput-gso/PATH/FAMILY/1372):
//     the same, but the segmenting sender floods, 47 × 1372 bytes per
//     sendmsg with UDP_SEGMENT, and the sink receives with UDP_GRO; both
//     tap paths, IPv4 and IPv6, for gopasst, the reference and gopasst
//     --no-offload. The tools are the same for every translator: the
//     reference, which has no offloads, gets the datagrams one by one from
//     the kernel and hands them on one by one; gopasst with offloads moves
//     a batch through the tap as one segmented frame and through its host
//     socket with one system call. The trial's note gives the datagrams
//     per message the sink received (47 when batches arrive whole).
//   - Goodput per translator CPU second: the same bytes divided by the CPU
//     time the translator used in the same window. CPU time is that of the
//     translator's process and all its descendants (gopasst re-executes
//     itself into the user namespace; its waiting parent counts too): the
//     process CPU clock of each (clock_gettime on the clock of
//     clock_getcpuclockid(3), all threads, nanoseconds) plus the times of
//     reaped children from /proc/PID/stat.
//   - Highest rate with under 1% loss (1372 bytes, tap paths): steps of
//     -step-dur at a fixed rate; a step passes if the sink counted at least
//     99% of what was sent and the sender kept 97% of the rate. The search
//     starts at half the translator's goodput of the same repetition,
//     doubles while steps pass and bisects after the first failure, -steps
//     steps in all.
//   - Request/response: one 64-byte datagram outstanding, from the
//     namespace to an echo server on the host, through the tap (gateway
//     address) and spliced (loopback, -U port): round trips per second and
//     the 99th percentile of the round-trip time over -rr-dur, after 200
//     round trips of warm-up. A request unanswered after 200 ms counts as
//     lost.
//   - Per-datagram cost with 1, 1,000 and 10,000 flows (-flows): as many
//     sockets in the namespace, each its own source port, send 1372-byte
//     datagrams round robin to the host through the tap at -flow-rate
//     datagrams a second in all; after every flow exists, the translator's
//     CPU time over -dur divided by the datagrams that arrived. Both
//     translators open a host socket per flow; the open-file limit is
//     raised for that (as far as the hard limit allows).
//   - TCP goodput (tcp/PATH/FAMILY/goodput, four paths, IPv4 and IPv6,
//     and the tap paths again with MTU 1500, tcp/PATH-mtu1500/…):
//     one connection; the sender writes a pseudo-random stream pattern
//     (fixed seed, a period of 999,983 bytes) in writes of 256 KiB as
//     fast as its socket takes them, for -warmup, then for -dur the sink
//     counts the bytes that arrive equal to the pattern at their offset
//     in the stream (a connection whose stream goes wrong counts as bad,
//     and fails the trial). Also the translator's CPU time per GB of it
//     (milliseconds, measured as for UDP), its wake-ups per MB (how often
//     its threads blocked: voluntary context switches summed over
//     /proc/PID/task/*/status, one per wait in epoll_wait, poll or a
//     futex that found nothing ready), and the peak RSS.
//     tcp/PATH/ipv4/goodput-4conn, both tap paths: the same over four
//     connections at once, each its own stream checked from its start;
//     the sink must have accepted all four.
//   - TCP request/response (tcp/PATH/FAMILY/rr, tap and splice, namespace
//     to host): one connection with TCP_NODELAY at both ends, one byte to
//     an echo server on the host and back at a time; transactions per
//     second and the 99th percentile of their time over -rr-dur, after
//     200 transactions of warm-up. A wrong answer, or none within 2 s,
//     fails the trial.
//   - TCP connection rate (tcp/tap-ns-host/FAMILY/conn): one connection
//     at a time from the namespace to the host's loopback through the tap:
//     connect, the server accepts and closes at once, the client reads the
//     end of the stream (no data) and closes; connections per second over
//     -rr-dur after 200 of warm-up. The server being the one that closes
//     first keeps TIME_WAIT off the client's ports. The same from the host
//     to its own address on the -t port, the server in the namespace
//     (tcp/tap-host-ns/ipv4/conn).
//   - Ping (ping/tap-ns-host/FAMILY): one echo request of 56 bytes
//     outstanding, from the namespace to its gateway through the tap; the
//     mean and the 99th percentile of the round-trip time over -rr-dur,
//     after 200 round trips of warm-up. A reply counts if its type,
//     identifier (the ping socket's), sequence number and payload (a
//     64-bit sequence number and a fixed pattern) are the request's; any
//     other reply fails the trial, a request unanswered in 200 ms counts
//     as lost. The path check also wants the host namespace's ICMP
//     counters to show every echo request that was answered.
//   - TCP connections held open (tcp/PATH/ipv4/conns-N, N 1,000 and
//     10,000, through the tap both ways: the namespace to the gateway, a
//     server on the host's loopback; the host to its own address on the
//     -t port, a server in the namespace): N connections, 64 opening at a
//     time, each sends a 16-byte request and checks the 32-byte answer
//     (its SHA-256) byte for byte. Then, all open and idle, the
//     translator's resident memory is read (VmRSS of its processes,
//     summed; the largest of four readings over a second): rows for that
//     RSS, the RSS over the idle one before the connections per
//     connection, and the connections established. Then the server ends
//     every connection (its FIN first), the client answers with its own
//     (within 30 s: a burst of 10,000 FINs overflows the tap's queue,
//     with either translator, and the retransmissions back off; the note
//     gives the time and the tap drops), and within 5 s more the translator
//     must let go of them: its descriptors
//     back to where they were (within 256; the reference refills pools of
//     spare sockets and pipes), and gopasst's own count of TCP
//     connections (its counters, on SIGUSR1) back to 0. A wrong answer, an
//     unclean end at either side, a translator that holds on or exits
//     fails the trial; connections not established fail it for gopasst,
//     and for the reference the row and the note say how far it got. The
//     reference takes two descriptors per connection (a socket and a
//     timerfd), so 10,000 need a hard open-file limit over 20,000; the
//     bench raises it to 131,072 if it may (CAP_SYS_RESOURCE), and both
//     translators raise their soft limit to the hard one. Short of that,
//     Debian 12's pasta drops the SYNs it has no socket for (and leaves
//     unanswered the connections to its -t port it cannot accept), and
//     Debian 13's exits ("Namespace net is gone", status 0: it cannot open the
//     namespace's file any more to see that it still exists).
//   - Peak RSS: VmHWM of the translator's processes, summed (for gopasst
//     its waiting parent too): idle, once started and the namespace has
//     resolved its gateways (the reference touches most of its buffers
//     with the first packets: about 14 MiB before, 30 MiB after); after
//     each goodput trial (the largest of a repetition is reported); after
//     each flows trial. TCP trials have rows of their own: idle with the
//     TCP ports forwarded, and after each TCP goodput trial. The TCP rows
//     come after all the UDP rows of the table.
//
// # Method
//
// Repetition after repetition (-reps, at least 3 for numbers worth
// quoting), every selected scenario runs once with each of its
// translators; which one goes first rotates from scenario to scenario and
// from one repetition to the next (A/B alternating; A/B/C where gopasst
// --no-offload runs too), so that slow drifts of the machine hit all
// alike. The table shows, per metric, the median over repetitions for each
// translator and the ratio gopasst/pasta (above 1 is better for gopasst
// where the unit says ↑, worse where it says ↓); where gopasst
// --no-offload ran, two more columns give its median and the ratio
// gopasst/(gopasst --no-offload), offloads on over off; the same for the
// second reference (-pasta2) and for the kernel baselines, gopasst/veth
// and gopasst/loopback (in the TCP goodput rows a fraction of the kernel's,
// the target being 0.5 through the tap). The baselines have no
// translator, so no rows of its costs (CPU time per GB, RSS): "—" there.
// Per-trial details
// (what was sent, tap drops, CPU seconds, search steps) go to standard
// error and, with -json, to a file.
//
// The default full run takes about 13 minutes on 2 cores (-dur is 1.5 s
// since the segmenting scenarios and the --no-offload variant came in; it
// was 2 s), plus about 1.5 minutes a repetition for the TCP scenarios
// (-run tcp selects them; -run '^[^t]' leaves them out), and about 50 s
// more for the many-connections ones among them (-run /conns- selects
// them). The kernel baselines, the four-connection, host→ns connection
// rate and ping scenarios add about 1.5 minutes a repetition
// (-veth=false leaves out the baselines' part, about a minute).
//
// # MSG_ZEROCOPY
//
// "bench zerocopy" (as any user, in about 25 s) measures one lever the
// translators do not use, without a translator: a sender thread's large
// UDP datagrams and TCP writes to a receiver on 127.0.0.1, plain against
// MSG_ZEROCOPY, interleaved; the goodput, the sender's CPU time per GB,
// and the share of zerocopy sends the kernel copied after all (it does
// for every send that loops to a local socket or a tun device, the only
// destinations a test may use here).
package main
