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

// TestQuick runs the benchmark binary in -quick mode on two scenarios,
// one through the tap and one spliced, and checks that both translators
// moved data intact on the path meant (never how fast).
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
	cmd := exec.Command(bin, "-quick", "-run", "^(goodput/tap-ns-host/ipv4/1372|goodput/splice-host-ns/ipv6/1372)$",
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
		if tr.Err != "" || tr.Moved == 0 || !tr.ViaOK {
			t.Errorf("%s with %s: moved %d bytes via %s (tap bytes %d), error %q, note %q",
				tr.Scenario, tr.Translator, tr.Moved, tr.Via, tr.TapBytes, tr.Err, tr.Note)
		}
	}
	if len(seen) != 4 || len(ts) != 4 {
		t.Errorf("want 2 scenarios × 2 translators, got %d trials: %v", len(ts), seen)
	}
	table, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if string(table) != stdout.String() || !strings.Contains(string(table), "| Goodput, tap ns→host, IPv4, 1372 B |") {
		t.Errorf("table file differs from standard output or lacks the goodput row:\n%s", table)
	}
	t.Logf("\n%s", stderr.String())
}
