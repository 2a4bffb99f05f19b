package e2e_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
)

// TestSplice checks pasta's loopback bypass: datagrams from the host's
// loopback to a -u port reach the namespace socket to socket, with their
// loopback source and port, remapped where asked; datagrams from the
// namespace's loopback to a -U port reach the host's loopback; replies go
// back to the sender's port; both families, byte-exact.
func TestSplice(t *testing.T) {
	sb := sandbox.New(t)
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			// In the namespace: echo servers for -u; then, once the host
			// side is ready, a client for -U.
			hostEcho := sb.Start(t, sb.HostNS, udptool, "echo", "-l", ap(f.loopback, 10030), "-count", "4", "-timeout", "20s")
			hostEcho.WaitLine(t, "ready", 20*time.Second)
			script := fmt.Sprintf("%[1]s echo -l %[2]s -count 4 -timeout 20s & %[1]s echo -l %[3]s -count 2 -timeout 20s & "+
				"%[1]s send -to %[4]s -from %[5]s -size 65000 -count 2 -echo -connect && "+
				"%[1]s send -to %[4]s -from %[5]s -size 1372 -count 2 -echo -connect; wait",
				udptool, ap(f.anyAddr, 10020), ap(f.anyAddr, 20021), ap(f.loopback, 10030), ap(f.loopback, 46000))
			p := pasta(t, sb, []string{"-u", "10020", "-u", "10021:20021", "-U", "10030"}, "sh", "-c", script)
			p.WaitLine(t, "listen "+ap(f.anyAddr, 10020), 5*time.Second)
			p.WaitLine(t, "listen "+ap(f.anyAddr, 20021), 5*time.Second)
			for _, s := range []struct {
				to, from string
				size     int
			}{
				{ap(f.loopback, 10020), ap(f.loopback, 45100), 65000},
				{ap(f.loopback, 10020), ap(f.loopback, 45100), 1},
				{ap(f.loopback, 10021), ap(f.loopback, 45101), 1372},
			} {
				out, err := sb.Command(sb.HostNS, udptool, "send", "-to", s.to, "-from", s.from, "-size", fmt.Sprint(s.size),
					"-count", "2", "-echo", "-connect").CombinedOutput()
				if err != nil {
					t.Fatalf("host -> namespace %s: %v\n%s\npasta stderr:\n%s", s.to, err, out, p.Stderr())
				}
			}
			wait(t, p, 0)
			var nsPeers []string
			for _, line := range strings.Split(p.Stdout(), "\n") {
				if strings.HasPrefix(line, `{"echoed"`) {
					nsPeers = append(nsPeers, parseEcho(t, line).Peers...)
				}
			}
			// Spliced datagrams keep their loopback source and port.
			for _, w := range []string{ap(f.loopback, 45100), ap(f.loopback, 45101)} {
				if !contains(nsPeers, w) {
					t.Errorf("namespace did not see %s; saw %v", w, nsPeers)
				}
			}
			for _, line := range strings.Split(p.Stdout(), "\n") {
				if strings.HasPrefix(line, `{"sent"`) {
					if r := parseSend(t, line); r.Received != 2 || r.Peer != ap(f.loopback, 10030) {
						t.Errorf("namespace -> host (-U): %+v", r)
					}
				}
			}
			wait(t, hostEcho, 0)
			if peers := parseEcho(t, hostEcho.Stdout()).Peers; len(peers) != 1 || peers[0] != ap(f.loopback, 46000) {
				t.Errorf("host saw %v, want %s", peers, ap(f.loopback, 46000))
			}
		})
	}
}

// TestSpliceTargets checks where spliced datagrams land: the namespace's
// own address by default (a server bound to its loopback only does not
// get them), its loopback with --host-lo-to-ns-lo, and the tap with
// --no-splice.
func TestSpliceTargets(t *testing.T) {
	sb := sandbox.New(t)
	run := func(args []string, listen string, wantOK bool, wantPeer string) {
		t.Helper()
		p := pasta(t, sb, append([]string{"-u", "10040"}, args...), udptool, "echo", "-l", listen, "-count", "1", "-timeout", "3s")
		p.WaitLine(t, "ready", 20*time.Second)
		err := sb.Command(sb.HostNS, udptool, "send", "-to", "127.0.0.1:10040", "-from", "127.0.0.1:45200", "-count", "1",
			"-echo", "-connect", "-wait", "1s").Run()
		if (err == nil) != wantOK {
			t.Fatalf("%v, server on %s: send error %v, want success %v", args, listen, err, wantOK)
		}
		p.Wait(10 * time.Second)
		if wantOK {
			if peers := parseEcho(t, p.Stdout()).Peers; len(peers) != 1 || peers[0] != wantPeer {
				t.Fatalf("%v: namespace saw %v, want %s", args, peers, wantPeer)
			}
		}
	}
	run(nil, "192.0.2.2:10040", true, "127.0.0.1:45200")
	run(nil, "127.0.0.1:10040", false, "")
	run([]string{"--host-lo-to-ns-lo"}, "127.0.0.1:10040", true, "127.0.0.1:45200")
	run([]string{"--no-splice"}, "0.0.0.0:10040", true, "192.0.2.1:45200")
}
