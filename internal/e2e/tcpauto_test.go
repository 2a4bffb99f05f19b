package e2e_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
	"github.com/gopasst/gopasst/internal/netns"
)

// TCP "auto" forwarding (-t auto, -T auto): a port is forwarded while
// something on the other side listens on it.

// tcpEchoEnv, set to "ADDR:PORT STOPFILE", turns the test binary into a
// TCP echo server (see tcpEchoMain) that stops listening once STOPFILE
// exists.
const tcpEchoEnv = "GOPASST_E2E_TCPECHO"

// The helper runs from init, before TestMain (in pasta_test.go, which
// dispatches the other helpers): a test binary started with tcpEchoEnv
// only serves.
func init() {
	if spec := os.Getenv(tcpEchoEnv); spec != "" {
		os.Exit(tcpEchoMain(spec))
	}
}

// tcpEchoMain listens on the address of spec (see tcpEchoEnv), prints
// "tcp-echo ready", and sends back what every connection sends until it
// half-closes. Once the stop file exists it closes the listener, prints
// "tcp-echo closed" and returns 0, leaving connections still open to
// finish on their own.
func tcpEchoMain(spec string) int {
	addr, stop, ok := strings.Cut(spec, " ")
	if !ok {
		fmt.Println("tcp-echo: bad spec", spec)
		return 1
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Println("tcp-echo:", err)
		return 1
	}
	fmt.Println("tcp-echo ready")
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if _, err := io.Copy(c, c); err == nil {
					_ = c.(*net.TCPConn).CloseWrite()
				}
			}()
		}
	}()
	for {
		if _, err := os.Stat(stop); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	ln.Close()
	fmt.Println("tcp-echo closed")
	return 0
}

// dialIn returns a function connecting from the network namespace at
// path (a name under /run/netns, or an nsfs path).
func dialIn(t *testing.T, path string) func(addr string) (*net.TCPConn, error) {
	t.Helper()
	ns, err := netns.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return func(addr string) (*net.TCPConn, error) {
		var c net.Conn
		// The socket is created on the thread that joined ns; its
		// I/O can then happen anywhere.
		err := ns.Do(func() error {
			var err error
			c, err = net.DialTimeout("tcp", addr, time.Second)
			return err
		})
		if err != nil {
			return nil, err
		}
		return c.(*net.TCPConn), nil
	}
}

// echoCheck sends size random bytes on c, half-closes it and expects the
// same bytes back, then the peer's close, within timeout.
func echoCheck(c *net.TCPConn, size int, timeout time.Duration) error {
	payload := make([]byte, size)
	for i := range payload {
		payload[i] = byte(rand.Uint32())
	}
	_ = c.SetDeadline(time.Now().Add(timeout))
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(c)
	if e := <-werr; e != nil {
		return fmt.Errorf("sending %d bytes: %w", size, e)
	}
	if err != nil {
		return fmt.Errorf("echo of %d bytes: %d bytes back, then %w", size, len(got), err)
	}
	if !bytes.Equal(got, payload) {
		i := 0
		for i < min(len(got), len(payload)) && got[i] == payload[i] {
			i++
		}
		return fmt.Errorf("echo of %d bytes: %d bytes back, first difference at byte %d", size, len(got), i)
	}
	return nil
}

// echoVia connects to addr with dial and checks an echo of size bytes.
func echoVia(dial func(string) (*net.TCPConn, error), addr string, size int) error {
	c, err := dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	return echoCheck(c, size, 10*time.Second)
}

// TestTCPAutoForwarding checks "-t auto": a TCP server started in the
// namespace after gopasst is reachable from the host, by the tap (with
// --no-splice), within two seconds, its echo byte-exact over IPv4 and
// IPv6, to the host's loopback and to its own address; and within two
// seconds of the server closing its listening socket, connections to the
// port are refused again, while the namespace lives on.
func TestTCPAutoForwarding(t *testing.T) {
	sb := sandbox.New(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	stop := filepath.Join(t.TempDir(), "stop")
	script := fmt.Sprintf("sleep 1; %s=':7790 %s' %s; sleep 5", tcpEchoEnv, stop, self)
	p := pasta(t, sb, []string{"-d", "--no-splice", "-t", "auto"}, "sh", "-c", script)
	dial := dialIn(t, sb.HostNS)

	p.WaitLine(t, "tcp-echo ready", 20*time.Second)
	ready := time.Now()
	for {
		err := echoVia(dial, "127.0.0.1:7790", 1)
		if err == nil {
			break
		}
		if time.Since(ready) > 2*time.Second {
			t.Fatalf("port 7790 not forwarded 2 s after the server listened: %v\n%s", err, p.Stderr())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("forwarded %v after the server listened", time.Since(ready).Round(10*time.Millisecond))
	if !strings.Contains(p.Stderr(), "TCP auto forwarding (-t): opened port 7790 -> 7790") {
		t.Errorf("forward opened without its log line\n%s", p.Stderr())
	}

	for _, addr := range []string{"127.0.0.1:7790", "[::1]:7790", "192.0.2.2:7790", "[2001:db8::2]:7790"} {
		for _, size := range []int{0, 1, 1460, 200000} {
			if err := echoVia(dial, addr, size); err != nil {
				t.Errorf("%s: %v", addr, err)
			}
		}
	}

	if err := os.WriteFile(stop, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	p.WaitLine(t, "tcp-echo closed", 5*time.Second)
	gone := time.Now()
	for _, addr := range []string{"127.0.0.1:7790", "[::1]:7790"} {
		for {
			c, err := dial(addr)
			if errors.Is(err, syscall.ECONNREFUSED) {
				break
			}
			if c != nil {
				c.Close()
			}
			if time.Since(gone) > 2*time.Second {
				t.Fatalf("%s: connection not refused 2 s after the server closed its listener (%v)\n%s", addr, err, p.Stderr())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	t.Logf("refused %v after the server closed its listener", time.Since(gone).Round(10*time.Millisecond))
	if !strings.Contains(p.Stderr(), "TCP auto forwarding (-t): closed port 7790") {
		t.Errorf("forward closed without its log line\n%s", p.Stderr())
	}
	wait(t, p, 0)
}

// TestTCPAutoForwardingReverse checks "-T auto" beside "-t auto": a port
// a host server listens on (127.0.0.1:7791, there before gopasst) is
// forwarded within three seconds of the namespace's server listening, the
// namespace's loopback then echoing byte-exact through it (TCP splice);
// the host listener gopasst itself opens for -t (port 7790, for the
// namespace's server) is never forwarded back, nor is the namespace's -T
// listener forwarded again by -t, over three more scans.
func TestTCPAutoForwardingReverse(t *testing.T) {
	sb := sandbox.New(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// The host's server, before gopasst starts.
	hostNS, err := netns.Open(sb.HostNS)
	if err != nil {
		t.Fatal(err)
	}
	defer hostNS.Close()
	var ln net.Listener
	if err := hostNS.Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", "127.0.0.1:7791")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if _, err := io.Copy(c, c); err == nil {
					_ = c.(*net.TCPConn).CloseWrite()
				}
			}()
		}
	}()

	// The namespace's server makes gopasst listen on the host's port
	// 7790 for -t.
	stop := filepath.Join(t.TempDir(), "stop")
	script := fmt.Sprintf("%s=':7790 %s' %s; sleep 1", tcpEchoEnv, stop, self)
	p := pasta(t, sb, []string{"-d", "-t", "auto", "-T", "auto"}, "sh", "-c", script)
	p.WaitLine(t, "tcp-echo ready", 20*time.Second)
	start := time.Now()
	const prefix = "TCP auto forwarding (-T): "
	reverse := func() []string {
		var out []string
		for _, l := range strings.Split(p.Stderr(), "\n") {
			if _, msg, ok := strings.Cut(l, prefix); ok {
				out = append(out, msg)
			}
		}
		return out
	}
	for !strings.Contains(p.Stderr(), prefix+"opened port 7791 -> 7791") || !strings.Contains(p.Stderr(), "TCP auto forwarding (-t): opened port 7790") {
		if time.Since(start) > 3*time.Second {
			t.Fatalf("no -t forward of port 7790 or no -T forward of port 7791 3 s after start\n%s", p.Stderr())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("both forwards open %v after the namespace's server listened", time.Since(start).Round(10*time.Millisecond))
	dial := dialIn(t, "/proc/"+childPID(t, p)+"/ns/net")
	for _, size := range []int{0, 1, 1460, 200000} {
		if err := echoVia(dial, "127.0.0.1:7791", size); err != nil {
			t.Errorf("the namespace's 127.0.0.1:7791: %v\n%s", err, p.Stderr())
		}
	}
	// Three more scans.
	time.Sleep(3 * time.Second)
	lines := reverse()
	for _, l := range lines {
		if strings.Contains(l, "7790") {
			t.Errorf("gopasst's own host port 7790 taken up by -T: %q", l)
		}
	}
	if want := "opened port 7791 -> 7791"; len(lines) != 1 || lines[0] != want {
		t.Errorf("-T messages %q, want only %q", lines, want)
	}
	for _, l := range strings.Split(p.Stderr(), "\n") {
		if _, msg, ok := strings.Cut(l, "TCP auto forwarding (-t): "); ok && strings.Contains(msg, "7791") {
			t.Errorf("the namespace's -T listener on port 7791 taken up by -t: %q", msg)
		}
	}
	if strings.Contains(p.Stderr(), "auto forwarding disabled") {
		t.Errorf("auto forwarding disabled:\n%s", p.Stderr())
	}
	if err := os.WriteFile(stop, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	wait(t, p, 0)
}
