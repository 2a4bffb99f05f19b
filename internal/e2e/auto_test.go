package e2e_test

import (
	"strings"
	"testing"
	"time"

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
)

// TestAutoForwarding checks pasta's default "-u auto": a server started in
// the namespace after gopasst becomes reachable from the host within two
// seconds, and its forward is closed within two seconds after it exits.
func TestAutoForwarding(t *testing.T) {
	sb := sandbox.New(t)
	// The server starts late, answers one datagram and exits; the
	// namespace lives on for a while.
	p := pasta(t, sb, []string{"-d", "--udp-timeout", "1"}, "sh", "-c",
		"sleep 1; "+udptool+" echo -l 0.0.0.0:7777 -count 1 -timeout 10s; sleep 6")
	p.WaitLine(t, "ready", 10*time.Second)
	ready := time.Now()
	for {
		err := sb.Command(sb.HostNS, udptool, "send", "-to", "127.0.0.1:7777", "-count", "1", "-echo", "-wait", "200ms").Run()
		if err == nil {
			break
		}
		if time.Since(ready) > 2*time.Second {
			t.Fatalf("port 7777 not forwarded 2 s after the server started\n%s", p.Stderr())
		}
	}
	t.Logf("forwarded %v after the server bound its port", time.Since(ready).Round(10*time.Millisecond))
	p.WaitLine(t, `"echoed":1`, 5*time.Second)
	gone := time.Now()
	for !strings.Contains(p.Stderr(), "closed port 7777") {
		if time.Since(gone) > 2*time.Second {
			t.Fatalf("forward not closed 2 s after the server exited\n%s", p.Stderr())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("closed %v after the server exited", time.Since(gone).Round(10*time.Millisecond))
	// Once the flow of the one exchange has expired too, nothing holds the
	// host port any more.
	for sb.Command(sb.HostNS, udptool, "echo", "-l", "0.0.0.0:7777", "-timeout", "10ms").Run() != nil {
		if time.Since(gone) > 4*time.Second {
			t.Fatal("host port 7777 still bound after the forward closed and the flow expired")
		}
		time.Sleep(100 * time.Millisecond)
	}
	wait(t, p, 0)
}
