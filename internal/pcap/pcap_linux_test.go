package pcap

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestTornWriteTruncated makes a record only partly reach the file, with
// RLIMIT_FSIZE (the Go runtime ignores SIGXFSZ, so the write returns EFBIG
// after its first bytes), and checks that the torn tail is cut off so the
// file stays valid and later records follow the last whole one.
func TestTornWriteTruncated(t *testing.T) {
	path := filepath.Join(t.TempDir(), "torn.pcap")
	w, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	a, b, c := testFrame(5, 0, 100), testFrame(5, 1, 100), testFrame(5, 2, 100)
	w.Frame(a)
	const afterA = fileHeaderLen + recHeaderLen + 100

	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_FSIZE, &old); err != nil {
		t.Fatal(err)
	}
	lim := old
	lim.Cur = afterA + recHeaderLen + 50 // b gets 66 of its 116 bytes
	if err := unix.Setrlimit(unix.RLIMIT_FSIZE, &lim); err != nil {
		t.Skipf("setrlimit: %v", err)
	}
	w.Frame(b)
	if err := unix.Setrlimit(unix.RLIMIT_FSIZE, &old); err != nil {
		t.Fatal(err)
	}
	if d := w.Dropped(); d != 1 {
		t.Fatalf("Dropped() = %d, want 1", d)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() != afterA {
		t.Fatalf("after the torn write: size %v (%v), want %d", fi.Size(), err, afterA)
	}

	w.Frame(c)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	recs := readBack(t, path)
	if len(recs) != 2 || !bytes.Equal(recs[0].data, a) || !bytes.Equal(recs[1].data, c) {
		t.Fatalf("got %d records, want frames a and c", len(recs))
	}
}
