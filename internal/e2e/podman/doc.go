// Package podman tests gopasst as the pasta of real rootless podman 5:
// Debian 13's podman, crun and conmon unpacked by .ci/podman.sh under
// /opt/podman-trixie (the test skips, with the script's reason, without
// them), run by the unprivileged user gopasst-podman inside the host
// namespace of a test sandbox (package sandbox), so that the host's own
// addresses (192.0.2.2, 2001:db8::2) and a remote peer (198.51.100.1,
// 2001:db8:1::1 in the sandbox's world namespace) are the test's own.
//
// podman finds gopasst through containers.conf's engine.helper_binaries_dir:
// a directory holding "pasta", a shell wrapper that records podman's
// command line and executes a link named pasta to the gopasst binary
// (which then runs in pasta mode). The image is Debian's busybox-static
// plus udptool (a UDP echo server), imported with podman import.
//
// The checks are what a new user would try: podman's own command line is
// accepted; published UDP and TCP ports answer from the host's loopback,
// its own IPv4 and IPv6 addresses and a remote peer; the container
// reaches a host service as host.containers.internal, resolves a name
// through --dns-forward (a small DNS responder on the host's loopback),
// pings its gateway and reaches a remote peer; a port below 1024 is
// refused with a clear reason; no gopasst process is left 100 ms after
// the container is removed. TestPodmanReference runs the same checks with
// Debian 13's pasta (bench/reference-trixie.sh) for comparison; its
// failures are reported, not failed.
package podman
