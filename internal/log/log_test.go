package log

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLogSize writes more than the limit and checks that the file stays
// under it, keeps the newest entries whole, and drops the oldest.
func TestLogSize(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	if err := OpenFile(path, 4096); err != nil {
		t.Fatal(err)
	}
	defer SetOutput(os.Stderr)
	for i := 0; i < 500; i++ {
		Errorf("entry %04d %s", i, strings.Repeat("x", 40))
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 4096 {
		t.Fatalf("log file of %d bytes, limit 4096", len(b))
	}
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if !strings.Contains(lines[len(lines)-1], "entry 0499") {
		t.Fatalf("newest entry missing: %q", lines[len(lines)-1])
	}
	if strings.Contains(string(b), "entry 0000") {
		t.Fatal("oldest entry kept")
	}
	for _, l := range lines {
		var n int
		if _, err := fmt.Sscanf(l[strings.Index(l, "entry"):], "entry %d", &n); err != nil || !strings.HasSuffix(l, strings.Repeat("x", 40)) {
			t.Fatalf("broken entry %q", l)
		}
	}
	if len(lines) < 30 {
		t.Fatalf("only %d entries kept", len(lines))
	}
}
