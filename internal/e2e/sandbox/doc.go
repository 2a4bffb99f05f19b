// Package sandbox builds throwaway network namespaces for end-to-end tests.
//
// A [Sandbox] consists of two namespaces created with ip-netns(8):
//
//   - a "host" namespace (gp-host-XXXXXXXX) standing in for the machine the
//     translator runs on, with an upstream interface eth0 carrying
//     192.0.2.2/24 and 2001:db8::2/64 and default routes via 192.0.2.1 and
//     2001:db8::1;
//   - a "world" namespace (gp-world-XXXXXXXX) on the other end of that veth
//     pair (eth0: 192.0.2.1/24, 2001:db8::1/64) which also owns the
//     "remote" addresses 198.51.100.1/32 and 2001:db8:1::1/128 on lo.
//
// Traffic the translator sends to non-loopback addresses therefore never
// leaves the machine: it ends up in the world namespace, where tests run
// servers (for example "udptool echo", see [BuildUdptool]).
//
// IPv6 duplicate address detection is disabled in both namespaces, so all
// addresses are usable as soon as [New] returns. Processes started with
// [Sandbox.Start] are killed, and both namespaces deleted, by a cleanup
// function registered on the test. Programs that are not tests (the
// benchmark in bench/, the soak tool) use [Create], [Sandbox.Spawn] and
// [Sandbox.Close] instead.
//
// The package needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and the ip
// command; [New] skips the test otherwise.
package sandbox
