package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// binPath is the udptool binary built by TestMain.
var binPath string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "udptool-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "udptool")
	out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// server is a running "udptool echo" or "udptool recv".
type server struct {
	cmd    *exec.Cmd
	addr   netip.AddrPort
	lines  chan string // stdout lines after "ready"; closed at EOF
	stderr *bytes.Buffer
	done   chan error
}

// startServer runs udptool with args, waits for "ready" and returns the
// bound address from the "listen" line.
func startServer(t *testing.T, args ...string) *server {
	t.Helper()
	cmd := exec.Command(binPath, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	s := &server{cmd: cmd, lines: make(chan string, 1024), stderr: new(bytes.Buffer), done: make(chan error, 1)}
	cmd.Stderr = s.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		isReady := false
		for sc.Scan() {
			line := sc.Text()
			switch {
			case isReady:
				s.lines <- line
			case strings.HasPrefix(line, "listen "):
				ap, err := netip.ParseAddrPort(strings.TrimPrefix(line, "listen "))
				if err != nil {
					ready <- err
					return
				}
				s.addr = ap
			case line == "ready":
				isReady = true
				ready <- nil
			}
		}
		if !isReady {
			ready <- errors.New("EOF before ready")
		}
		close(s.lines)
		s.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		select {
		case <-s.done:
		case <-time.After(5 * time.Second):
			t.Errorf("server %v did not exit", args)
		}
	})
	select {
	case err := <-ready:
		if err != nil {
			t.Fatalf("udptool %v: %v; stderr: %s", args, err, s.stderr)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("udptool %v: no ready line", args)
	}
	return s
}

// wait waits for the server to exit and returns its remaining stdout lines.
func (s *server) wait(t *testing.T) ([]string, error) {
	t.Helper()
	var lines []string
	timeout := time.After(10 * time.Second)
	for {
		select {
		case l, ok := <-s.lines:
			if !ok {
				select {
				case err := <-s.done:
					s.done <- err
					return lines, err
				case <-timeout:
					t.Fatal("server did not exit")
				}
			}
			lines = append(lines, l)
		case <-timeout:
			t.Fatal("server did not exit")
		}
	}
}

// runSend runs "udptool send" and decodes its result line.
func runSend(t *testing.T, args ...string) (sendResult, int, string) {
	t.Helper()
	cmd := exec.Command(binPath, append([]string{"send"}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatal(err)
		}
		code = ee.ExitCode()
	}
	var res sendResult
	if jerr := json.Unmarshal(stdout.Bytes(), &res); jerr != nil {
		t.Fatalf("send %v: bad output %q (stderr %q): %v", args, stdout.String(), stderr.String(), jerr)
	}
	return res, code, stderr.String()
}

func TestEchoSend(t *testing.T) {
	for _, host := range []string{"127.0.0.1", "::1"} {
		for _, connect := range []bool{false, true} {
			for _, size := range []int{0, 1, 1372, 65000} {
				name := fmt.Sprintf("%s/connect=%v/size=%d", host, connect, size)
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					srv := startServer(t, "echo", "-l", netip.AddrPortFrom(netip.MustParseAddr(host), 0).String())
					args := []string{"-to", srv.addr.String(), "-size", fmt.Sprint(size), "-count", "20", "-echo"}
					if connect {
						args = append(args, "-connect")
					}
					res, code, stderr := runSend(t, args...)
					if code != 0 || res.Sent != 20 || res.Received != 20 || res.Bad != 0 {
						t.Fatalf("send: exit %d, %+v, stderr %q", code, res, stderr)
					}
					if res.Peer != srv.addr.String() {
						t.Errorf("peer = %q, want %q", res.Peer, srv.addr)
					}
					if _, err := netip.ParseAddrPort(res.Local); err != nil {
						t.Errorf("local %q: %v", res.Local, err)
					}
				})
			}
		}
	}
}

func TestFlows(t *testing.T) {
	for _, host := range []string{"127.0.0.1", "::1"} {
		t.Run(host, func(t *testing.T) {
			t.Parallel()
			addr := netip.MustParseAddr(host)
			srv := startServer(t, "echo", "-l", netip.AddrPortFrom(addr, 0).String(), "-timeout", "10s")
			res, code, stderr := runSend(t, "-to", srv.addr.String(), "-from", netip.AddrPortFrom(addr, 0).String(),
				"-size", "1372", "-count", "20", "-flows", "50", "-echo", "-timeout", "20s")
			if code != 0 || res.Sent != 1000 || res.Received != 1000 || res.Bad != 0 {
				t.Fatalf("send: exit %d, %+v, stderr %q", code, res, stderr)
			}
			if local := netip.MustParseAddrPort(res.Local); local.Addr() != addr || local.Port() == 0 {
				t.Errorf("local = %v", local)
			}
			srv.cmd.Process.Signal(os.Interrupt)
			lines, err := srv.wait(t)
			if err != nil {
				t.Fatalf("echo: %v, stderr %q", err, srv.stderr)
			}
			var sum echoSummary
			if len(lines) != 1 || json.Unmarshal([]byte(lines[0]), &sum) != nil {
				t.Fatalf("echo output %q", lines)
			}
			if sum.Echoed != 1000 || len(sum.Peers) != 50 {
				t.Errorf("echo summary: echoed %d, %d peers; want 1000, 50", sum.Echoed, len(sum.Peers))
			}
		})
	}
}

// TestWildcardEchoSource checks that an echo server bound to a wildcard
// address replies from the address the request was sent to.
func TestWildcardEchoSource(t *testing.T) {
	for _, tc := range []struct{ listen, to string }{
		{"0.0.0.0", "127.0.0.2"},
		{"0.0.0.0", "127.0.0.1"},
		{"::", "::1"},
	} {
		t.Run(tc.to, func(t *testing.T) {
			t.Parallel()
			srv := startServer(t, "echo", "-l", netip.AddrPortFrom(netip.MustParseAddr(tc.listen), 0).String())
			to := netip.AddrPortFrom(netip.MustParseAddr(tc.to), srv.addr.Port())
			res, code, stderr := runSend(t, "-to", to.String(), "-count", "3", "-echo")
			if code != 0 || res.Received != 3 || res.Peer != to.String() {
				t.Fatalf("send: exit %d, %+v, stderr %q", code, res, stderr)
			}
		})
	}
}

func TestEchoCount(t *testing.T) {
	srv := startServer(t, "echo", "-l", "127.0.0.1:0", "-count", "3")
	res, code, stderr := runSend(t, "-to", srv.addr.String(), "-count", "3", "-echo", "-connect")
	if code != 0 || res.Received != 3 {
		t.Fatalf("send: exit %d, %+v, stderr %q", code, res, stderr)
	}
	lines, err := srv.wait(t)
	if err != nil {
		t.Fatalf("echo: %v, stderr %q", err, srv.stderr)
	}
	want := fmt.Sprintf(`{"echoed":3,"peers":[%q]}`, res.Local)
	if len(lines) != 1 || lines[0] != want {
		t.Errorf("echo output %q, want %q", lines, want)
	}
}

func TestEchoIdleTimeout(t *testing.T) {
	srv := startServer(t, "echo", "-l", "127.0.0.1:0", "-count", "2", "-timeout", "200ms")
	if _, err := srv.wait(t); err == nil {
		t.Fatal("echo -count 2 exited 0 without traffic")
	}
	srv = startServer(t, "echo", "-l", "127.0.0.1:0", "-timeout", "200ms")
	if _, err := srv.wait(t); err != nil {
		t.Fatalf("idle echo without -count: %v", err)
	}
}

func TestRecv(t *testing.T) {
	for _, size := range []int{0, 5, 16, 1372, 65000} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			t.Parallel()
			srv := startServer(t, "recv", "-l", "[::1]:0", "-count", "4")
			res, code, stderr := runSend(t, "-to", srv.addr.String(), "-size", fmt.Sprint(size), "-count", "4", "-interval", "1ms")
			if code != 0 || res.Sent != 4 || res.Received != 0 {
				t.Fatalf("send: exit %d, %+v, stderr %q", code, res, stderr)
			}
			lines, err := srv.wait(t)
			if err != nil {
				t.Fatalf("recv: %v, stderr %q", err, srv.stderr)
			}
			if len(lines) != 4 {
				t.Fatalf("recv printed %q", lines)
			}
			for i, l := range lines {
				var rl recvLine
				if err := json.Unmarshal([]byte(l), &rl); err != nil {
					t.Fatal(err)
				}
				wantSeq := int64(i)
				if size < headerLen {
					wantSeq = -1
				}
				if !rl.OK || rl.Len != size || rl.From != res.Local && !strings.HasSuffix(rl.From, res.Local[strings.LastIndex(res.Local, ":"):]) || rl.Seq != wantSeq || rl.To != srv.addr.String() {
					t.Errorf("line %d: %s (sender %s)", i, l, res.Local)
				}
			}
		})
	}
}

func TestRecvCorrupt(t *testing.T) {
	srv := startServer(t, "recv", "-l", "127.0.0.1:0", "-count", "3")
	c, err := net.Dial("udp4", srv.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	good := make([]byte, 100)
	fillPayload(good, 7, 9)
	bad := bytes.Clone(good)
	bad[50] ^= 1
	for _, p := range [][]byte{good, bad, []byte("garbage")} {
		if _, err := c.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	lines, err := srv.wait(t)
	if err != nil {
		t.Fatalf("recv: %v", err)
	}
	want := []string{`"ok":true,"flow":7,"seq":9`, `"ok":false`, `"ok":false`}
	if len(lines) != 3 {
		t.Fatalf("recv printed %q", lines)
	}
	for i := range want {
		if !strings.Contains(lines[i], want[i]) {
			t.Errorf("line %d = %s, want %s", i, lines[i], want[i])
		}
	}
}

func TestRecvTimeout(t *testing.T) {
	srv := startServer(t, "recv", "-l", "127.0.0.1:0", "-timeout", "200ms")
	if _, err := srv.wait(t); err == nil {
		t.Fatal("recv exited 0 without traffic")
	}
	if !strings.Contains(srv.stderr.String(), "timeout") {
		t.Errorf("stderr %q", srv.stderr)
	}
}

// TestWrongSource uses a server that answers from another port: send must
// flag the replies as bad, and with -connect the kernel drops them.
func TestWrongSource(t *testing.T) {
	in, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := in.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			out.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	to := in.LocalAddr().String()
	res, code, _ := runSend(t, "-to", to, "-count", "2", "-echo", "-wait", "300ms")
	if code == 0 || res.Bad != 2 || res.Received != 0 || res.Peer != out.LocalAddr().String() {
		t.Errorf("unconnected: exit %d, %+v", code, res)
	}
	res, code, _ = runSend(t, "-to", to, "-count", "2", "-echo", "-connect", "-wait", "300ms")
	if code == 0 || res.Bad != 0 || res.Received != 0 || res.Sent != 2 || res.Peer != "" {
		t.Errorf("connected: exit %d, %+v", code, res)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"bogus"},
		{"send"},
		{"send", "-to", "127.0.0.1:9", "-size", "65508"},
		{"send", "-to", "127.0.0.1:9", "-from", "[::1]:0"},
		{"send", "-to", "localhost:9"},
		{"echo", "-l", "127.0.0.1"},
		{"recv", "-l", "127.0.0.1:0", "-count", "0"},
		{"echo", "-nosuchflag"},
	} {
		err := exec.Command(binPath, args...).Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != exitUsage {
			t.Errorf("udptool %q: %v, want exit %d", args, err, exitUsage)
		}
	}
}

func TestPayload(t *testing.T) {
	for size := 0; size < 70; size++ {
		b := make([]byte, size)
		fillPayload(b, 3, 4)
		flow, seq, ok := verifyPayload(b)
		if !ok {
			t.Fatalf("size %d: not ok", size)
		}
		if size >= headerLen && (flow != 3 || seq != 4) {
			t.Fatalf("size %d: flow %d seq %d", size, flow, seq)
		}
		for i := 0; i < size && i < 70; i++ {
			c := bytes.Clone(b)
			c[i] ^= 0x40
			if _, _, ok := verifyPayload(c); ok && (size >= headerLen || i < len(magic)) {
				t.Fatalf("size %d: corruption at %d not detected", size, i)
			}
		}
	}
	a, b := make([]byte, 65000), make([]byte, 65000)
	fillPayload(a, 0, 1)
	fillPayload(b, 1, 0)
	if bytes.Equal(a[headerLen:], b[headerLen:]) {
		t.Error("patterns of different flows/seqs are equal")
	}
}
