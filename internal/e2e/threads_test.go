package e2e_test

import (
	"fmt"
	"testing"

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
)

// TestTCPOneThread moves TCP data both ways through pasta's tap with
// both directions served on the event loop's thread (GOPASST_THREADS=1,
// the engine's experimental way of running; by default the tap reader
// has a goroutine of its own, which every other test here exercises).
func TestTCPOneThread(t *testing.T) {
	sb := sandbox.New(t)
	n := startTCPNSPrefix(t, sb, []string{"env", "GOPASST_THREADS=1"})
	for _, f := range families {
		for _, c := range outbound(sb, n, f, false, 10*mib) {
			t.Run(fmt.Sprintf("%s/%s", f.name, c.name), func(t *testing.T) {
				c.tr.run(t, n)
			})
		}
	}
}
