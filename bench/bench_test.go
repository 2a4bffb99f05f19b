package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
)

// TestQuick runs the benchmark binary in -quick mode on four scenarios:
// plain senders through the tap and spliced, a segmenting sender
// (UDP_SEGMENT, to a UDP_GRO receiver) through the tap, host to namespace
// (the other direction uses the same tools and would make the test take
// over 30 s), and a TCP stream through the tap, host to namespace (a -t
// port). It checks that every translator that runs a scenario
// (gopasst --no-offload too, in the tap goodput scenarios, and the veth
// baseline in the TCP one) moved data
// intact on the path meant, never how fast: data that moved while the
// machine was too busy to let it move in the short measured part counts.
func TestQuick(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if _, err := os.Stat("/usr/bin/pasta"); err != nil {
		t.Skip("reference pasta not installed")
	}
	for _, tool := range []string{"ip", "nsenter", "setpriv", "unshare"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not found", tool)
		}
	}
	bin := sandbox.BuildBinary(t, "github.com/gopasst/gopasst/bench")
	dir := t.TempDir()
	out := filepath.Join(dir, "table.md")
	trials := filepath.Join(dir, "trials.json")
	cmd := exec.Command(bin, "-quick", "-run",
		"^(goodput/tap-ns-host/ipv4/1372|goodput/splice-host-ns/ipv6/1372|goodput-gso/tap-host-ns/ipv4/1372|tcp/tap-host-ns/ipv4/goodput)$",
		"-o", out, "-json", trials)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("bench: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	b, err := os.ReadFile(trials)
	if err != nil {
		t.Fatal(err)
	}
	var ts []Trial
	if err := json.Unmarshal(b, &ts); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, tr := range ts {
		seen[tr.Scenario+" "+tr.Translator] = true
		if tr.Err != "" || tr.ViaBytes == 0 || !tr.ViaOK || tr.Bad > 0 {
			t.Errorf("%s with %s: moved %d bytes via %s (%d bytes to check, tap bytes %d), %d bad datagrams, error %q, note %q",
				tr.Scenario, tr.Translator, tr.Moved, tr.Via, tr.ViaBytes, tr.TapBytes, tr.Bad, tr.Err, tr.Note)
		}
	}
	want := []string{
		"goodput/tap-ns-host/ipv4/1372 gopasst", "goodput/tap-ns-host/ipv4/1372 pasta", "goodput/tap-ns-host/ipv4/1372 " + noOffload,
		"goodput/splice-host-ns/ipv6/1372 gopasst", "goodput/splice-host-ns/ipv6/1372 pasta",
		"tcp/tap-host-ns/ipv4/goodput gopasst", "tcp/tap-host-ns/ipv4/goodput pasta", "tcp/tap-host-ns/ipv4/goodput " + noOffload,
		"tcp/tap-host-ns/ipv4/goodput " + kernelVeth,
	}
	for _, tr := range []string{"gopasst", "pasta", noOffload} {
		want = append(want, "goodput-gso/tap-host-ns/ipv4/1372 "+tr)
	}
	for _, w := range want {
		if !seen[w] {
			t.Errorf("no trial %q", w)
		}
	}
	if len(ts) != len(want) {
		t.Errorf("want %d trials, got %d: %v", len(want), len(ts), seen)
	}
	table, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, row := range []string{"| Goodput, tap ns→host, IPv4, 1372 B |", "| Goodput, tap host→ns, IPv4, 47 × 1372 B per sendmsg (UDP_SEGMENT), UDP_GRO receiver |",
		"| " + noOffload + " |", "| TCP goodput, tap host→ns, IPv4 |"} {
		if !strings.Contains(string(table), row) {
			t.Errorf("table lacks %q:\n%s", row, table)
		}
	}
	if string(table) != stdout.String() {
		t.Errorf("table file differs from standard output:\n%s\n%s", table, stdout.String())
	}
	t.Logf("\n%s", stderr.String())
}
