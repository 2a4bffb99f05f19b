package protocols_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestLayering checks the layout the core promises: no package of the
// core (the engine, the event loop, the flow table, the guest writer, the
// forwarding layer, counters and "auto" scanning) nor the modes and the
// control socket built on it imports a protocol package, directly or
// through others. Only package protocols, which cmd/gopasst hands to the
// modes, ties the protocols in.
func TestLayering(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool to list dependencies with")
	}
	const mod = "github.com/gopasst/gopasst/internal/"
	neutral := []string{"engine", "evloop", "flow", "toguest", "fwd", "stats", "autoscan", "netcfg", "pasta", "passt", "ctl", "tap"}
	protocol := map[string]bool{mod + "udp": true, mod + "tcp": true, mod + "icmp": true, mod + "protocols": true}
	for _, p := range neutral {
		out, err := exec.Command(goTool, "list", "-deps", mod+p).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", p, err, out)
		}
		deps := strings.Fields(string(out))
		if len(deps) == 0 || deps[len(deps)-1] != mod+p {
			t.Fatalf("go list -deps %s: unexpected output %q", p, out)
		}
		for _, d := range deps {
			if protocol[d] {
				t.Errorf("package %s imports %s", p, strings.TrimPrefix(d, mod))
			}
		}
	}
	// And the protocols are really there to be found.
	out, err := exec.Command(goTool, "list", "-deps", mod+"protocols").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps protocols: %v\n%s", err, out)
	}
	for d := range protocol {
		if !strings.Contains(string(out), d+"\n") {
			t.Errorf("package protocols does not import %s", strings.TrimPrefix(d, mod))
		}
	}
}
