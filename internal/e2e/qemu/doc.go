// Package qemu boots a real Linux guest under qemu, connected to passt (the
// reference implementation or gopasst's passt mode), for end-to-end tests
// of passt mode with the guest's own network stack: DHCP, SLAAC, DHCPv6 and
// UDP seen through a virtio-net device, not through a fake guest.
//
// # Theory
//
// passt serves a virtual machine over a UNIX stream socket: each Ethernet
// frame travels as a 4-byte big-endian length followed by the frame. qemu
// 7.2 speaks this protocol with
//
//	-netdev stream,id=n0,server=off,addr.type=unix,addr.path=SOCKET
//	-device virtio-net-pci,netdev=n0
//
// so the guest sees a virtio-net interface whose only peer is passt. passt
// answers ARP, DHCP, NDP (router advertisements) and DHCPv6 itself, and
// turns the guest's UDP datagrams into datagrams sent from ordinary sockets
// of the host, and back. Addressed to the default gateway, they go to the
// host's loopback interface (unless --no-map-gw).
//
// Everything runs inside a [sandbox.Sandbox]: passt, qemu and the test's
// UDP services run in its "host" network namespace, so the guest's traffic
// ends up in the sandbox (host loopback or the "world" namespace) and never
// leaves the machine. qemu has no network but the socket; the socket path
// is a plain file.
//
// # Guest
//
// The guest is the machine's own kernel (/boot/vmlinuz-*, from Debian's
// linux-image-cloud-amd64 or linux-image-amd64) with an initramfs built on
// the fly (see [BuildInitramfs]): a static busybox, the virtio-net modules
// of that kernel with their dependencies (from modules.dep, decompressed,
// loaded with insmod in dependency order), udptool and dhcp6probe (static
// Go programs), and an /init shell script. The default script
// ([InitScript]) configures the network the way a distribution would, but
// with busybox only: udhcpc for DHCPv4, the kernel's SLAAC for IPv6 and
// dhcp6probe for DHCPv6 (Debian's busybox-static has no udhcpc6). It then
// runs udptool sends and echo servers and prints what happened between
// markers on the serial console (ttyS0), which qemu writes to its stdout.
// When done, /init powers the guest off ("poweroff -f") and qemu exits; a
// panic also ends qemu (panic=-1 with -no-reboot). [ParseConsole] turns
// the console into a [Report].
//
// Without /dev/kvm qemu emulates the CPU (TCG): a boot to a configured
// network takes a few seconds more but needs no privileges beyond root
// for the sandbox.
//
// # Use
//
//	if err := qemu.Available(); err != nil {
//		t.Skip(err)
//	}
//	sb := sandbox.New(t)
//	p := qemu.StartPasst(t, sb, qemu.ReferencePasst, "-u", "5000")
//	console := qemu.Boot(t, sb, p.Socket, qemu.InitScript(opts), 2*time.Minute)
//	r := qemu.ParseConsole(console)
//
// [CheckPasst] is the whole conformance check, parametrised by the passt
// command so that the same test runs against the reference and gopasst.
//
// The Debian packages needed (qemu-system-x86, linux-image-cloud-amd64,
// busybox-static, and passt as the reference) are installed by
// .ci/install-qemu-deps. Setting GOPASST_QEMU=0 disables the tests;
// GOPASST_QEMU_KERNEL selects a kernel image.
package qemu
