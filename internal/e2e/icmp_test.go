package e2e_test

import (
	"errors"
	"fmt"
	"net"
	"os"
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
