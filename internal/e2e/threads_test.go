package e2e_test

import (
	"fmt"
	"testing"

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
)

// TestTCPTwoThreads moves TCP data both ways through pasta's tap with
// the tap reader on a goroutine of its own beside the event loop's
// (GOPASST_THREADS=2; by default pasta's tap is one more descriptor of
// the loop, which every other test here exercises, and passt's qemu
// socket always has a reader of its own).
func TestTCPTwoThreads(t *testing.T) {
	sb := sandbox.New(t)
	n := startTCPNSPrefix(t, sb, []string{"env", "GOPASST_THREADS=2"})
	for _, f := range families {
		for _, c := range outbound(sb, n, f, false, 10*mib) {
			t.Run(fmt.Sprintf("%s/%s", f.name, c.name), func(t *testing.T) {
				c.tr.run(t, n)
			})
		}
	}
}
