// Package netns deals with Linux namespaces for pasta mode: it creates or
// opens the network namespace, creates the tap device inside it, configures
// addresses and routes there over rtnetlink, starts the command that will
// live there, discovers the host's uplink interface, and arranges for the
// program to run inside a user namespace when it is not privileged.
//
// # Locked threads
//
// A network namespace is an attribute of a thread (a Linux task), not of a
// process, and the Go runtime multiplexes goroutines over a pool of threads.
// Every switch therefore happens on a goroutine pinned with
// runtime.LockOSThread: the thread joins the namespace (setns, or unshare for
// a new one), does its work, and is never unlocked, so the runtime destroys
// it when the goroutine ends instead of letting another goroutine run on it
// in the wrong namespace. Going back is not even tried: inside a user
// namespace gopasst may not re-enter the host's network namespace, which
// belongs to the initial user namespace. The runtime never starts new
// threads from a locked one, so the namespace does not leak to other threads
// either.
//
// Objects are bound to the namespace of the thread that created them, not of
// the one using them: a socket, a netlink socket (see NS.NetlinkHandle), a
// tap device and a forked child process created inside NS.Do all belong to
// the namespace and keep doing so when used from anywhere else afterwards.
// That is why NS.Do is needed only at creation time.
//
// # The tap device across namespaces
//
// NS.CreateTap opens /dev/net/tun and issues TUNSETIFF on a thread inside the
// namespace, so the network interface appears there, and returns the open
// descriptor. That descriptor is an ordinary file descriptor of this process:
// the rest of the program reads and writes Ethernet frames through it from
// the original (init) namespace, which is the whole point of pasta. The
// interface disappears when the descriptor is closed or the namespace
// disappears (the NS handle keeps it alive).
//
// # User namespaces by re-execution
//
// Joining or creating a user namespace (setns or unshare with CLONE_NEWUSER)
// is refused by the kernel for a multi-threaded process, and a Go program is
// always multi-threaded. EnterUserNS and JoinUserNS therefore re-execute the
// program: EnterUserNS starts /proc/self/exe with CLONE_NEWUSER and UID/GID
// maps (0 mapped to the caller's effective IDs), JoinUserNS runs it through
// nsenter(1), a single-threaded C program that can setns() into the user
// namespace and become UID 0 there. The original process only relays
// signals, waits and reports the exit code.
//
// The copy is recognised by the ReexecMarker environment variable, which
// this package reads and removes at initialisation (together with the
// private variable carrying the original argv[0] across nsenter, and the
// descriptors handed to nsenter); InUserNSChild reports it. Both functions
// are no-ops in the copy, so the program can call them unconditionally near
// the start of main.
package netns
