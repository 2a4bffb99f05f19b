package pcap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/gopasst/gopasst/internal/tap"
)

// testFrame builds a deterministic frame of size bytes identified by
// goroutine g and sequence number seq, which it carries in its first
// three bytes.
func testFrame(g, seq, size int) []byte {
	b := make([]byte, size)
	b[0] = byte(g)
	binary.BigEndian.PutUint16(b[1:], uint16(seq))
	for j := 3; j < size; j++ {
		b[j] = byte(j*31 + g*7 + seq*13 + j>>8)
	}
	return b
}

func frameID(b []byte) (g, seq int) {
	return int(b[0]), int(binary.BigEndian.Uint16(b[1:]))
}

var testSizes = []int{14, 15, 42, 60, 64, 1500, 1514, 4096, 9014, 32768, 65521, 65534, 65535}

// record is one packet read back from a capture.
type record struct {
	data   []byte
	ts     time.Time
	length int
}

// readBack reads the capture at path with gopacket's pcapgo, the
// independent reader, checking the file header.
func readBack(t *testing.T, path string) []record {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		t.Fatalf("pcapgo.NewReader: %v", err)
	}
	if lt := r.LinkType(); lt != layers.LinkTypeEthernet {
		t.Errorf("link type %v, want Ethernet", lt)
	}
	if s := r.Snaplen(); s != SnapLen {
		t.Errorf("snaplen %d, want %d", s, SnapLen)
	}
	if res := r.Resolution(); res.ToDuration() != time.Microsecond {
		t.Errorf("resolution %v, want microseconds", res.ToDuration())
	}
	var recs []record
	for {
		data, ci, err := r.ReadPacketData()
		if err == io.EOF {
			return recs
		}
		if err != nil {
			t.Fatalf("record %d: %v", len(recs), err)
		}
		if ci.CaptureLength != len(data) {
			t.Fatalf("record %d: capture length %d, data %d", len(recs), ci.CaptureLength, len(data))
		}
		recs = append(recs, record{data: data, ts: ci.Timestamp, length: ci.Length})
	}
}

func TestFileHeader(t *testing.T) {
	path := filepath.Join(t.TempDir(), "h.pcap")
	// Create truncates an existing file.
	if err := os.WriteFile(path, bytes.Repeat([]byte{0xee}, 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 24)
	e := binary.NativeEndian
	e.PutUint32(want[0:], 0xa1b2c3d4)
	e.PutUint16(want[4:], 2)
	e.PutUint16(want[6:], 4)
	e.PutUint32(want[16:], 65535)
	e.PutUint32(want[20:], 1)
	if !bytes.Equal(b, want) {
		t.Fatalf("header\n got %x\nwant %x", b, want)
	}
	if recs := readBack(t, path); len(recs) != 0 {
		t.Fatalf("%d records in an empty capture", len(recs))
	}
}

func TestCreateError(t *testing.T) {
	if _, err := Create(filepath.Join(t.TempDir(), "no", "such", "dir.pcap")); err == nil {
		t.Fatal("Create in a missing directory succeeded")
	}
	if _, err := os.Stat("/dev/full"); err == nil {
		if _, err := Create("/dev/full"); err == nil {
			t.Fatal("Create on /dev/full succeeded: header write error lost")
		}
	}
}

// TestConcurrent writes frames of many sizes from several goroutines, some
// one by one and some in batches, and checks that each is in the file
// exactly once, byte-exact, with timestamps in order.
func TestConcurrent(t *testing.T) {
	const (
		goroutines = 8
		perG       = 60
	)
	path := filepath.Join(t.TempDir(), "c.pcap")
	w, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now().Truncate(time.Microsecond)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			var batch [][]byte
			for seq := range perG {
				f := testFrame(g, seq, testSizes[(seq+g)%len(testSizes)])
				if g%2 == 0 {
					w.Frame(f)
					continue
				}
				// Odd goroutines batch 1..7 frames at a time.
				batch = append(batch, f)
				if len(batch) == seq%7+1 || seq == perG-1 {
					w.Frames(batch)
					batch = nil
				}
			}
		})
	}
	wg.Wait()
	end := time.Now()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if d := w.Dropped(); d != 0 {
		t.Fatalf("%d frames dropped", d)
	}

	recs := readBack(t, path)
	if len(recs) != goroutines*perG {
		t.Fatalf("%d records, want %d", len(recs), goroutines*perG)
	}
	seen := make(map[[2]int]bool)
	lastTS := make(map[int]time.Time)
	var prev time.Time
	for i, r := range recs {
		g, seq := frameID(r.data)
		if g >= goroutines || seq >= perG {
			t.Fatalf("record %d: unknown frame %d/%d", i, g, seq)
		}
		if seen[[2]int{g, seq}] {
			t.Fatalf("record %d: frame %d/%d seen twice", i, g, seq)
		}
		seen[[2]int{g, seq}] = true
		if want := testFrame(g, seq, testSizes[(seq+g)%len(testSizes)]); !bytes.Equal(r.data, want) {
			t.Fatalf("record %d: frame %d/%d differs (len %d, want %d)", i, g, seq, len(r.data), len(want))
		}
		if r.length != len(r.data) {
			t.Fatalf("record %d: original length %d, captured %d", i, r.length, len(r.data))
		}
		// Frames of one goroutine are in its order...
		if seq > 0 && !seen[[2]int{g, seq - 1}] {
			t.Fatalf("record %d: frame %d/%d before %d/%d", i, g, seq, g, seq-1)
		}
		// ... and their timestamps do not decrease; nor do they in file
		// order overall.
		if r.ts.Before(lastTS[g]) {
			t.Fatalf("record %d: goroutine %d timestamp %v before %v", i, g, r.ts, lastTS[g])
		}
		lastTS[g] = r.ts
		if r.ts.Before(prev) {
			t.Fatalf("record %d: timestamp %v before previous %v", i, r.ts, prev)
		}
		prev = r.ts
		if r.ts.Before(start) || r.ts.After(end) {
			t.Fatalf("record %d: timestamp %v outside [%v, %v]", i, r.ts, start, end)
		}
	}
}

func TestOversizeFrame(t *testing.T) {
	path := filepath.Join(t.TempDir(), "o.pcap")
	w, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	big := testFrame(1, 1, 70000)
	w.Frame(big)
	w.Frame(testFrame(1, 2, 14))
	w.Frame(nil) // an empty record is still a valid one
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	recs := readBack(t, path)
	if len(recs) != 3 {
		t.Fatalf("%d records, want 3", len(recs))
	}
	if !bytes.Equal(recs[0].data, big[:SnapLen]) || recs[0].length != 70000 {
		t.Fatalf("oversize record: captured %d of %d", len(recs[0].data), recs[0].length)
	}
	if !bytes.Equal(recs[1].data, testFrame(1, 2, 14)) {
		t.Fatal("record after the oversize one differs")
	}
	if len(recs[2].data) != 0 || recs[2].length != 0 {
		t.Fatal("empty record not empty")
	}
}

func TestCloseTwiceAndFrameAfterClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.pcap")
	w, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w.Frame(testFrame(0, 0, 60))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	w.Frame(testFrame(0, 1, 60))
	w.Frames([][]byte{testFrame(0, 2, 60)})
	if err := w.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if recs := readBack(t, path); len(recs) != 1 {
		t.Fatalf("%d records, want 1", len(recs))
	}
}

// TestWriteErrors makes writes fail by swapping the file for a read-only
// descriptor of it: frames are dropped and counted, nothing panics, and
// once writes work again the file goes on with whole records.
func TestWriteErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "e.pcap")
	w, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w.Frame(testFrame(0, 0, 100))

	good := w.f
	ro, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	w.mu.Lock()
	w.f = ro
	w.mu.Unlock()
	w.Frame(testFrame(0, 1, 100))
	w.Frames([][]byte{testFrame(0, 2, 100), testFrame(0, 3, 100)})
	if d := w.Dropped(); d != 3 {
		t.Fatalf("Dropped() = %d, want 3", d)
	}

	w.mu.Lock()
	w.f = good
	w.mu.Unlock()
	w.Frame(testFrame(0, 4, 100))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	recs := readBack(t, path)
	if len(recs) != 2 {
		t.Fatalf("%d records, want 2", len(recs))
	}
	for i, seq := range []int{0, 4} {
		if !bytes.Equal(recs[i].data, testFrame(0, seq, 100)) {
			t.Fatalf("record %d is not frame %d", i, seq)
		}
	}
}

// TestNonRegularErrors checks that a non-regular capture (/dev/full here)
// counts failing writes and does not stop.
func TestNonRegularErrors(t *testing.T) {
	full, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
	if err != nil {
		t.Skip("no /dev/full")
	}
	w := &Writer{path: "/dev/full", f: full}
	for i := range 5 {
		w.Frame(testFrame(0, i, 60))
	}
	w.Frames([][]byte{testFrame(0, 5, 60), testFrame(0, 6, 60)})
	if d := w.Dropped(); d != 7 {
		t.Fatalf("Dropped() = %d, want 7", d)
	}
	if w.broken {
		t.Fatal("capture marked torn though nothing was written")
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

// fakeEP is a tap endpoint: ReadBatch returns queued frames, WriteFrame
// keeps what it is given and fails frames starting with 0xff.
type fakeEP struct {
	mu      sync.Mutex
	reads   [][]byte
	written [][]byte
	closed  bool
}

var errFake = errors.New("fake write failure")

func (f *fakeEP) ReadBatch(bufs [][]byte, lens []int) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.reads) == 0 {
		return 0, tap.ErrClosed
	}
	n := 0
	for n < len(bufs) && len(f.reads) > 0 {
		lens[n] = copy(bufs[n], f.reads[0])
		f.reads = f.reads[1:]
		n++
	}
	return n, nil
}

func (f *fakeEP) WriteFrame(frame []byte) error {
	if frame[0] == 0xff {
		return errFake
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.written = append(f.written, bytes.Clone(frame))
	return nil
}

func (f *fakeEP) Close() error {
	f.closed = true
	return nil
}

// fakeBatchEP also writes batches: it takes frames up to the first one
// starting with 0xff, then fails.
type fakeBatchEP struct{ fakeEP }

func (f *fakeBatchEP) WriteFrames(frames [][]byte) (int, error) {
	for i, fr := range frames {
		if err := f.WriteFrame(fr); err != nil {
			return i, err
		}
	}
	return len(frames), nil
}

type framesWriter interface {
	WriteFrames([][]byte) (int, error)
}

func TestCapture(t *testing.T) {
	for _, batch := range []bool{false, true} {
		t.Run(fmt.Sprintf("batch=%v", batch), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "cap.pcap")
			w, err := Create(path)
			if err != nil {
				t.Fatal(err)
			}
			var inner tap.Endpoint
			var fake *fakeEP
			if batch {
				b := &fakeBatchEP{}
				inner, fake = b, &b.fakeEP
			} else {
				fake = &fakeEP{}
				inner = fake
			}
			in1, in2, in3 := testFrame(1, 1, 60), testFrame(1, 2, 1514), testFrame(1, 3, 14)
			fake.reads = [][]byte{in1, in2, in3}

			ep := Capture(inner, w)
			_, isBatch := ep.(framesWriter)
			if isBatch != batch {
				t.Fatalf("wrapper offers WriteFrames: %v, inner: %v", isBatch, batch)
			}

			var want [][]byte
			// Reads: a batch of two, then one, with buffers larger
			// than the frames.
			bufs := [][]byte{make([]byte, 2048), make([]byte, 2048)}
			lens := make([]int, 2)
			if n, err := ep.ReadBatch(bufs, lens); n != 2 || err != nil {
				t.Fatalf("ReadBatch = %d, %v", n, err)
			}
			want = append(want, in1, in2)

			out1 := testFrame(2, 1, 42)
			if err := ep.WriteFrame(out1); err != nil {
				t.Fatal(err)
			}
			want = append(want, out1)
			bad := testFrame(0xff, 1, 60)
			if err := ep.WriteFrame(bad); !errors.Is(err, errFake) {
				t.Fatalf("failing WriteFrame returned %v", err)
			}

			if n, err := ep.ReadBatch(bufs, lens); n != 1 || err != nil {
				t.Fatalf("ReadBatch = %d, %v", n, err)
			}
			want = append(want, in3)
			if n, err := ep.ReadBatch(bufs, lens); n != 0 || !errors.Is(err, tap.ErrClosed) {
				t.Fatalf("ReadBatch at end = %d, %v", n, err)
			}

			if batch {
				bw := ep.(framesWriter)
				o2, o3, o4 := testFrame(2, 2, 9014), testFrame(2, 3, 65535), testFrame(2, 4, 60)
				if n, err := bw.WriteFrames([][]byte{o2, o3}); n != 2 || err != nil {
					t.Fatalf("WriteFrames = %d, %v", n, err)
				}
				want = append(want, o2, o3)
				// Only the first goes out: only it is recorded.
				if n, err := bw.WriteFrames([][]byte{o4, bad, testFrame(2, 5, 60)}); n != 1 || !errors.Is(err, errFake) {
					t.Fatalf("WriteFrames = %d, %v", n, err)
				}
				want = append(want, o4)
			}

			if err := ep.Close(); err != nil || !fake.closed {
				t.Fatalf("Close = %v, inner closed %v", err, fake.closed)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			recs := readBack(t, path)
			if len(recs) != len(want) {
				t.Fatalf("%d records, want %d", len(recs), len(want))
			}
			for i := range want {
				if !bytes.Equal(recs[i].data, want[i]) {
					g, seq := frameID(recs[i].data)
					t.Errorf("record %d is frame %d/%d (len %d), want len %d", i, g, seq, len(recs[i].data), len(want[i]))
				}
			}
			// What the wrapper wrote reached the inner endpoint.
			if wantOut := len(want) - 3; len(fake.written) != wantOut {
				t.Errorf("inner endpoint got %d frames, want %d", len(fake.written), wantOut)
			}
		})
	}
}

func TestCaptureNilWriter(t *testing.T) {
	ep := &fakeEP{}
	if got := Capture(ep, nil); got != tap.Endpoint(ep) {
		t.Fatal("Capture with a nil Writer wrapped the endpoint")
	}
}

// TestCaptureConcurrent runs a reader and two writers through a batch
// capture under the race detector, and checks every delivered frame is
// recorded once.
func TestCaptureConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cc.pcap")
	w, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	inner := &fakeBatchEP{}
	const n = 200
	for i := range n {
		inner.reads = append(inner.reads, testFrame(0, i, testSizes[i%len(testSizes)]))
	}
	ep := Capture(inner, w)
	var wg sync.WaitGroup
	wg.Go(func() {
		bufs := make([][]byte, 8)
		for i := range bufs {
			bufs[i] = make([]byte, 65536)
		}
		lens := make([]int, len(bufs))
		for {
			if _, err := ep.ReadBatch(bufs, lens); err != nil {
				return
			}
		}
	})
	wg.Go(func() {
		for i := range n {
			if err := ep.WriteFrame(testFrame(1, i, testSizes[i%len(testSizes)])); err != nil {
				t.Error(err)
			}
		}
	})
	wg.Go(func() {
		bw := ep.(framesWriter)
		for i := 0; i < n; i += 4 {
			var b [][]byte
			for j := i; j < i+4; j++ {
				b = append(b, testFrame(2, j, testSizes[j%len(testSizes)]))
			}
			if k, err := bw.WriteFrames(b); k != 4 || err != nil {
				t.Errorf("WriteFrames = %d, %v", k, err)
			}
		}
	})
	wg.Wait()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	recs := readBack(t, path)
	if len(recs) != 3*n {
		t.Fatalf("%d records, want %d", len(recs), 3*n)
	}
	seen := make(map[[2]int]bool)
	for i, r := range recs {
		g, seq := frameID(r.data)
		if seen[[2]int{g, seq}] {
			t.Fatalf("record %d: frame %d/%d twice", i, g, seq)
		}
		seen[[2]int{g, seq}] = true
		if !bytes.Equal(r.data, testFrame(g, seq, testSizes[seq%len(testSizes)])) {
			t.Fatalf("record %d: frame %d/%d differs", i, g, seq)
		}
	}
}

// TestExternalReaders has tshark and tcpdump, where installed, read a
// capture while its Writer is still open, and checks that they do not
// complain and see every frame with its length.
func TestExternalReaders(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ext.pcap")
	w, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	var want []string
	for i, size := range testSizes {
		w.Frame(testFrame(3, i, size))
		want = append(want, strconv.Itoa(size))
	}
	w.Frames([][]byte{testFrame(4, 0, 60), testFrame(4, 1, 1514)})
	want = append(want, "60", "1514")

	ran := false
	for _, tool := range []struct {
		name string
		args []string
		// lengths extracts the frame lengths from the tool's output.
		lengths func(out string) []string
	}{
		{"tshark", []string{"-n", "-r", path, "-T", "fields", "-e", "frame.len", "-e", "frame.cap_len"},
			func(out string) []string {
				var l []string
				for line := range strings.Lines(out) {
					f := strings.Fields(line)
					if len(f) != 2 || f[0] != f[1] {
						return append(l, "bad line "+line)
					}
					l = append(l, f[0])
				}
				return l
			}},
		{"tcpdump", []string{"-n", "-r", path},
			func(out string) []string {
				// One line per packet, "... length N: ...", then
				// indented hex dumps of unknown payloads.
				var l []string
				for line := range strings.Lines(out) {
					if line == "" || line[0] == ' ' || line[0] == '\t' {
						continue
					}
					_, rest, ok := strings.Cut(line, ", length ")
					n, _, ok2 := strings.Cut(rest, ":")
					if !ok || !ok2 {
						return append(l, "bad line "+line)
					}
					l = append(l, n)
				}
				return l
			}},
	} {
		bin, err := exec.LookPath(tool.name)
		if err != nil {
			continue
		}
		ran = true
		cmd := exec.Command(bin, tool.args...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Errorf("%s: %v\n%s", tool.name, err, stderr.String())
			continue
		}
		low := strings.ToLower(stderr.String())
		for _, bad := range []string{"cut short", "corrupt", "truncated", "error", "bogus", "invalid"} {
			if strings.Contains(low, bad) {
				t.Errorf("%s complains: %s", tool.name, stderr.String())
			}
		}
		if got := tool.lengths(stdout.String()); !slices.Equal(got, want) {
			t.Errorf("%s saw frames of lengths %v, want %v", tool.name, got, want)
		}
	}
	if !ran {
		t.Skip("neither tshark nor tcpdump installed")
	}
}
