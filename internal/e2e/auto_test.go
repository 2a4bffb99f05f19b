package e2e_test

import (
	"fmt"
	"os/exec"
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
	p.WaitLine(t, "ready", 20*time.Second)
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

// TestAutoForwardingReverse checks "-U auto" (also a pasta default): a
// server started on the host's loopback after gopasst becomes reachable at
// the namespace's loopback within two seconds; and the host port gopasst
// itself listens on for -u is not forwarded back (no loop).
func TestAutoForwardingReverse(t *testing.T) {
	sb := sandbox.New(t)
	// After a reverse scan has run, the namespace's 127.0.0.1:10070 must
	// still be free: the host port 10070 is bound only by gopasst (-u).
	script := "sleep 1.5; " + udptool + " echo -l 127.0.0.1:10070 -timeout 10ms && echo port-free || echo port-taken; sleep 6"
	p := pasta(t, sb, []string{"-u", "10070"}, "sh", "-c", script)
	if line := p.WaitLine(t, "port-", 10*time.Second); line != "port-free" {
		t.Fatalf("the namespace's 127.0.0.1:10070 was taken (%s): gopasst forwarded its own -u port back\n%s", line, p.Stderr())
	}
	echo := sb.Start(t, sb.HostNS, udptool, "echo", "-l", "127.0.0.1:7780", "-timeout", "20s")
	echo.WaitLine(t, "ready", 20*time.Second)
	ready := time.Now()
	for {
		// From inside the namespace (nsenter into the pasta child's
		// network namespace), to its own loopback.
		pid := childPID(t, p)
		err := sb.Command("", "nsenter", "-t", pid, "-n", udptool, "send", "-to", "127.0.0.1:7780", "-count", "1", "-echo", "-wait", "200ms").Run()
		if err == nil {
			break
		}
		if time.Since(ready) > 2*time.Second {
			t.Fatalf("host port 7780 not reachable from the namespace's loopback 2 s after it was bound\n%s", p.Stderr())
		}
	}
	t.Logf("reverse-forwarded %v after the host server bound its port", time.Since(ready).Round(10*time.Millisecond))
}

// childPID finds the pid of the command gopasst started (its only child).
func childPID(t *testing.T, p *sandbox.Proc) string {
	t.Helper()
	out, err := exec.Command("pgrep", "-P", fmt.Sprint(p.Cmd.Process.Pid)).Output()
	if err != nil {
		t.Fatalf("no child of gopasst: %v", err)
	}
	return strings.Fields(string(out))[0]
}

// TestForwardSpecs checks exclusions and address binding of -u on the
// wire: excluded ports are not listened on, and a forward bound to an
// address does not take datagrams sent to another of the host's addresses.
func TestForwardSpecs(t *testing.T) {
	sb := sandbox.New(t)
	script := fmt.Sprintf("%[1]s echo -l 0.0.0.0:10060 -timeout 5s & %[1]s echo -l 0.0.0.0:10062 -timeout 5s & %[1]s echo -l 0.0.0.0:10065 -timeout 5s & wait", udptool)
	p := pasta(t, sb, []string{"--no-splice", "-u", "10060-10062,~10061", "-u", "127.0.0.1/10065"}, "sh", "-c", script)
	for _, port := range []string{"10060", "10062", "10065"} {
		p.WaitLine(t, "listen 0.0.0.0:"+port, 5*time.Second)
	}
	send := func(to string) error {
		return sb.Command(sb.HostNS, udptool, "send", "-to", to, "-count", "1", "-echo", "-wait", "500ms").Run()
	}
	for _, to := range []string{"127.0.0.1:10060", "127.0.0.1:10062", "127.0.0.1:10065"} {
		if err := send(to); err != nil {
			t.Errorf("%s not forwarded: %v", to, err)
		}
	}
	if err := send("127.0.0.1:10061"); err == nil {
		t.Error("excluded port 10061 was forwarded")
	}
	if err := send("192.0.2.2:10065"); err == nil {
		t.Error("forward bound to 127.0.0.1 took a datagram sent to 192.0.2.2")
	}
	// Nothing listens on the excluded port: the host may bind it.
	if err := sb.Command(sb.HostNS, udptool, "echo", "-l", "0.0.0.0:10061", "-timeout", "10ms").Run(); err != nil {
		t.Errorf("excluded port 10061 is bound on the host: %v", err)
	}
}
