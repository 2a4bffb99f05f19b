package e2e_test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
)

// refusedEnv, set to ADDR:PORT, turns the test binary into a probe: a
// connected UDP socket sends one datagram there and must then see
// ECONNREFUSED, as a program does on a real network when the port is
// closed.
const refusedEnv = "GOPASST_E2E_REFUSED"

func refusedMain() int {
	c, err := net.Dial("udp", os.Getenv(refusedEnv))
	if err != nil {
		fmt.Println("dial:", err)
		return 1
	}
	defer c.Close()
	if _, err := c.Write([]byte("anyone there?")); err != nil {
		fmt.Println("write:", err)
		return 1
	}
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	_, err = c.Read(make([]byte, 64))
	if errors.Is(err, syscall.ECONNREFUSED) {
		fmt.Println("refused")
		return 0
	}
	fmt.Println("read:", err)
	return 1
}

// TestPortUnreachable sends from the namespace to a closed port on the
// host (through the gateway address) and expects the ICMP port
// unreachable the host's kernel answers with to reach the namespace's
// socket as ECONNREFUSED, IPv4 and IPv6.
func TestPortUnreachable(t *testing.T) {
	sb := sandbox.New(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, to := range []string{"192.0.2.1:5999", "[2001:db8::1]:5999", "198.51.100.1:5999", "[2001:db8:1::1]:5999"} {
		p := pasta(t, sb, []string{"-d"}, "env", refusedEnv+"="+to, self)
		code, err := p.Wait(20 * time.Second)
		if code != 0 || err != nil {
			t.Fatalf("%s: %q (exit %d)\n%s", to, p.Stdout(), code, p.Stderr())
		}
	}
}

// TestCountersOnSIGUSR1 checks that SIGUSR1 prints the counters, and that
// they moved with the traffic.
func TestCountersOnSIGUSR1(t *testing.T) {
	sb := sandbox.New(t)
	echo := sb.Start(t, sb.HostNS, udptool, "echo", "-l", "127.0.0.1:5800", "-timeout", "20s")
	echo.WaitLine(t, "ready", 20*time.Second)
	p := pasta(t, sb, []string{"-q"}, "sh", "-c", udptool+" send -to 192.0.2.1:5800 -count 3 -size 100 -echo -connect; echo sent; sleep 3")
	p.WaitLine(t, "sent", 10*time.Second)
	// The counters move just after the frame is written, so the echo can
	// reach the sender before the last datagram is counted: signal again
	// until a dump shows all three, for at most two seconds.
	deadline := time.Now().Add(2 * time.Second)
	for {
		if err := p.Signal(syscall.SIGUSR1); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
		if s := p.Stderr(); strings.Contains(s, "udp datagrams to host: 3") && strings.Contains(s, "udp bytes to tap: 300") &&
			strings.Contains(s, "udp flows active (tap): 1") && strings.Contains(s, "udp flows active (splice): 0") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no counters after SIGUSR1:\n%s", p.Stderr())
		}
	}
}

// TestMulticastNotForwarded checks that multicast from the namespace is
// dropped and counted, not sent to the host's network: the host side
// listens on the group's port and must get nothing.
func TestMulticastNotForwarded(t *testing.T) {
	sb := sandbox.New(t)
	recv := sb.Start(t, sb.HostNS, udptool, "recv", "-l", "0.0.0.0:5353", "-count", "1", "-timeout", "2s")
	recv.WaitLine(t, "ready", 20*time.Second)
	p := pasta(t, sb, []string{"-d"}, "sh", "-c",
		udptool+" send -to 224.0.0.251:5353 -count 2 -size 10; "+udptool+" send -to [ff02::fb%eth0]:5353 -count 2 -size 10; true")
	wait(t, p, 0)
	if !strings.Contains(p.Stderr(), "drop multicast: ") || strings.Contains(p.Stderr(), "drop multicast: 0\n") {
		t.Fatalf("multicast not counted as dropped:\n%s", p.Stderr())
	}
	if code, _ := recv.Wait(5 * time.Second); code == 0 {
		t.Fatalf("multicast reached the host: %s", recv.Stdout())
	}
}

// TestFragmentsFromNamespace sends datagrams the namespace's kernel must
// fragment (larger than its MTU): gopasst reassembles them, and the host
// gets them whole; the echoes come back byte-exact.
func TestFragmentsFromNamespace(t *testing.T) {
	sb := sandbox.New(t)
	for _, c := range []struct {
		mtu  string
		to   string
		size int
	}{
		{"65520", "192.0.2.1:5950", 65507},
		{"65520", "[2001:db8::1]:5950", 65527},
		{"1500", "192.0.2.1:5951", 9000},
		{"1500", "[2001:db8::1]:5951", 9000},
	} {
		t.Run(c.mtu+"/"+c.to, func(t *testing.T) {
			loop := "127.0.0.1"
			if strings.HasPrefix(c.to, "[") {
				loop = "[::1]"
			}
			echo := sb.Start(t, sb.HostNS, udptool, "echo", "-l", loop+c.to[strings.LastIndex(c.to, ":"):], "-count", "2", "-timeout", "20s")
			echo.WaitLine(t, "ready", 20*time.Second)
			p := pasta(t, sb, []string{"-d", "-m", c.mtu}, udptool, "send", "-to", c.to, "-size", fmt.Sprint(c.size), "-count", "2", "-echo", "-connect")
			wait(t, p, 0)
			if r := parseSend(t, p.Stdout()); r.Received != 2 || r.Bad != 0 {
				t.Fatalf("send result %+v", r)
			}
			if !strings.Contains(p.Stderr(), "ip datagrams reassembled: 2") {
				t.Fatalf("datagrams were not reassembled:\n%s", p.Stderr())
			}
		})
	}
}

// replyEnv, set to a port, turns the test binary into a server that takes
// one datagram on that port, waits for its sender to go away, answers it
// on a connected socket and must then see ECONNREFUSED.
const replyEnv = "GOPASST_E2E_REPLY"

func replyMain() int {
	l, err := net.ListenPacket("udp", ":"+os.Getenv(replyEnv))
	if err != nil {
		fmt.Println("listen:", err)
		return 1
	}
	fmt.Println("ready")
	_ = l.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, from, err := l.ReadFrom(make([]byte, 64))
	l.Close()
	if err != nil {
		fmt.Println("read:", err)
		return 1
	}
	time.Sleep(500 * time.Millisecond) // the sender exits meanwhile
	lport := os.Getenv(replyEnv)
	c, err := net.DialUDP("udp", &net.UDPAddr{Port: atoi(lport)}, from.(*net.UDPAddr))
	if err != nil {
		fmt.Println("dial:", err)
		return 1
	}
	defer c.Close()
	if _, err := c.Write([]byte("late answer")); err != nil {
		fmt.Println("write:", err)
		return 1
	}
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Read(make([]byte, 64)); errors.Is(err, syscall.ECONNREFUSED) {
		fmt.Println("refused")
		return 0
	} else {
		fmt.Println("read:", err)
	}
	return 1
}

func atoi(s string) int {
	n := 0
	for _, c := range s {
		n = n*10 + int(c-'0')
	}
	return n
}

// TestReplyToClosedPort: a host program sends to a forwarded port and
// exits; the namespace's answer, on a connected socket, must come back as
// ECONNREFUSED (the ICMP error lands on gopasst's listening socket).
func TestReplyToClosedPort(t *testing.T) {
	sb := sandbox.New(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, to := range []string{"127.0.0.1:10090", "[::1]:10090"} {
		p := pasta(t, sb, []string{"--no-splice", "-u", "10090"}, "env", replyEnv+"=10090", self)
		p.WaitLine(t, "ready", 20*time.Second)
		if out, err := sb.Command(sb.HostNS, udptool, "send", "-to", to, "-count", "1").CombinedOutput(); err != nil {
			t.Fatalf("send: %v %s", err, out)
		}
		code, err := p.Wait(20 * time.Second)
		if code != 0 || err != nil {
			t.Fatalf("%s: %q (exit %d)\n%s", to, p.Stdout(), code, p.Stderr())
		}
	}
}
