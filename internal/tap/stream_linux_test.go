package tap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopasst/gopasst/internal/log"
)

func TestMain(m *testing.M) {
	log.SetOutput(io.Discard)
	os.Exit(m.Run())
}

// testBatch is the number of buffers the tests read with.
const testBatch = 8

func newBufs(n int) ([][]byte, []int) {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, 65536)
	}
	return bufs, make([]int, n)
}

// listenTest opens a Stream on a socket in a temporary directory.
func listenTest(t *testing.T, cfg StreamConfig) *Stream {
	t.Helper()
	if cfg.Path == "" && cfg.FD < 0 {
		cfg.Path = filepath.Join(t.TempDir(), "s")
	}
	return listenCfg(t, cfg)
}

// listenCfg opens a Stream with cfg as it is.
func listenCfg(t *testing.T, cfg StreamConfig) *Stream {
	t.Helper()
	s, err := ListenStream(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func dial(t *testing.T, path string) *net.UnixConn {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// record frames a frame as passt does.
func record(frame []byte) []byte {
	r := make([]byte, 4+len(frame))
	binary.BigEndian.PutUint32(r, uint32(len(frame)))
	copy(r[4:], frame)
	return r
}

func randFrame(rng *rand.Rand, n int) []byte {
	f := make([]byte, n)
	rng.Read(f)
	return f
}

// readFrame reads one framed frame from r.
func readFrame(r io.Reader) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	l := binary.BigEndian.Uint32(hdr[:])
	if l == 0 || l > MaxStreamFrame {
		return nil, fmt.Errorf("bad length %d in stream", l)
	}
	f := make([]byte, l)
	if _, err := io.ReadFull(r, f); err != nil {
		return nil, err
	}
	return f, nil
}

type batch struct {
	frames [][]byte
	err    error
}

// reader runs ReadBatch in a loop on its own goroutine and hands over each
// batch, copied. It stops after an error. When the test ends, it closes s
// and waits for the goroutine, so that nothing is logged later.
func reader(t *testing.T, s *Stream, n int) <-chan batch {
	ch := make(chan batch, 1024)
	t.Cleanup(func() {
		s.Close()
		for range ch {
		}
	})
	go func() {
		bufs, lens := newBufs(n)
		for {
			k, err := s.ReadBatch(bufs, lens)
			var b batch
			for i := 0; i < k; i++ {
				b.frames = append(b.frames, bytes.Clone(bufs[i][:lens[i]]))
			}
			b.err = err
			ch <- b
			if err != nil {
				close(ch)
				return
			}
		}
	}()
	return ch
}

// collect takes frames from ch until it has n of them.
func collect(t *testing.T, ch <-chan batch, n int) [][]byte {
	t.Helper()
	var got [][]byte
	timeout := time.After(10 * time.Second)
	for len(got) < n {
		select {
		case b, ok := <-ch:
			if !ok {
				t.Fatalf("reader stopped after %d of %d frames", len(got), n)
			}
			got = append(got, b.frames...)
			if b.err != nil {
				t.Fatalf("ReadBatch after %d of %d frames: %v", len(got), n, b.err)
			}
		case <-timeout:
			t.Fatalf("timed out after %d of %d frames", len(got), n)
		}
	}
	if len(got) != n {
		t.Fatalf("got %d frames, want %d", len(got), n)
	}
	return got
}

// expectErr waits for the reader to stop with err.
func expectErr(t *testing.T, ch <-chan batch, want error) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case b, ok := <-ch:
			if !ok {
				t.Fatal("reader stopped without an error")
			}
			if len(b.frames) > 0 {
				t.Fatalf("unexpected %d frames", len(b.frames))
			}
			if b.err != nil {
				if !errors.Is(b.err, want) {
					t.Fatalf("ReadBatch: %v, want %v", b.err, want)
				}
				return
			}
		case <-timeout:
			t.Fatalf("ReadBatch did not return %v", want)
		}
	}
}

// guestConn waits until the Stream has a guest and returns its descriptor.
func guestConn(t *testing.T, s *Stream) int {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		s.wmu.Lock()
		fd, dead := s.conn, s.dead
		s.wmu.Unlock()
		if fd >= 0 && dead == "" {
			return fd
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("no guest connected")
	return -1
}

// expectEOF checks that the Stream closed the guest's connection.
func expectEOF(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [1]byte
	if n, err := c.Read(b[:]); err != io.EOF {
		t.Fatalf("guest read %d bytes, %v; want EOF", n, err)
	}
}

// lockedBuffer collects log output.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := strings.TrimSpace(l.b.String())
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

func captureLog(t *testing.T) *lockedBuffer {
	lb := &lockedBuffer{}
	log.SetOutput(lb)
	t.Cleanup(func() { log.SetOutput(io.Discard) })
	return lb
}

func TestStreamFramesExact(t *testing.T) {
	s := listenTest(t, StreamConfig{FD: -1})
	ch := reader(t, s, testBatch)
	g := dial(t, s.Path())
	rng := rand.New(rand.NewSource(1))
	sizes := []int{14, 60, 1514, 65534, MaxStreamFrame, 1, 13}
	var want [][]byte
	for _, n := range sizes {
		f := randFrame(rng, n)
		want = append(want, f)
		if _, err := g.Write(record(f)); err != nil {
			t.Fatal(err)
		}
	}
	got := collect(t, ch, len(want))
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Errorf("frame %d (%d bytes): got %d bytes, different content", i, len(want[i]), len(got[i]))
		}
	}
}

func TestStreamSplitAtEveryByte(t *testing.T) {
	s := listenTest(t, StreamConfig{FD: -1})
	g := dial(t, s.Path())
	rng := rand.New(rand.NewSource(2))
	frame := randFrame(rng, 100)
	rec := record(frame)

	type result struct {
		frame []byte
		n     int
		err   error
	}
	next := make(chan struct{})
	results := make(chan result)
	go func() {
		bufs, lens := newBufs(testBatch)
		for range next {
			n, err := s.ReadBatch(bufs, lens)
			r := result{n: n, err: err}
			if n > 0 {
				r.frame = bytes.Clone(bufs[0][:lens[0]])
			}
			results <- r
		}
		close(results)
	}()
	defer close(next)

	next <- struct{}{}
	fd := guestConn(t, s)
	for k := 1; k < len(rec); k++ {
		if k > 1 {
			next <- struct{}{}
		}
		if _, err := g.Write(rec[:k]); err != nil {
			t.Fatal(err)
		}
		// Wait until the reader has taken the first part, so the frame
		// really arrives in two reads.
		deadline := time.Now().Add(5 * time.Second)
		for {
			q, err := unix.IoctlGetInt(fd, unix.SIOCINQ)
			if err != nil {
				t.Fatal(err)
			}
			if q == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("k=%d: reader did not take the first %d bytes", k, k)
			}
			time.Sleep(50 * time.Microsecond)
		}
		select {
		case r := <-results:
			t.Fatalf("k=%d: ReadBatch returned early: %d frames, %v", k, r.n, r.err)
		default:
		}
		if _, err := g.Write(rec[k:]); err != nil {
			t.Fatal(err)
		}
		r := <-results
		if r.err != nil || r.n != 1 {
			t.Fatalf("k=%d: ReadBatch: %d frames, %v", k, r.n, r.err)
		}
		if !bytes.Equal(r.frame, frame) {
			t.Fatalf("k=%d: frame differs", k)
		}
	}
	// Each frame took at least two reads.
	if s.reads < 2*(len(rec)-1) {
		t.Errorf("%d reads for %d split frames", s.reads, len(rec)-1)
	}
}

func TestStreamManyFramesOneRead(t *testing.T) {
	s := listenTest(t, StreamConfig{FD: -1})
	g := dial(t, s.Path())
	rng := rand.New(rand.NewSource(3))
	var want [][]byte
	var all []byte
	for i := 0; i < 10; i++ {
		f := randFrame(rng, 60+rng.Intn(1500))
		want = append(want, f)
		all = append(all, record(f)...)
	}
	// One write, before ReadBatch even accepts the connection.
	if _, err := g.Write(all); err != nil {
		t.Fatal(err)
	}
	bufs, lens := newBufs(4)
	var got [][]byte
	for _, wantN := range []int{4, 4, 2} {
		n, err := s.ReadBatch(bufs, lens)
		if err != nil || n != wantN {
			t.Fatalf("ReadBatch: %d frames, %v; want %d", n, err, wantN)
		}
		for i := 0; i < n; i++ {
			got = append(got, bytes.Clone(bufs[i][:lens[i]]))
		}
		if s.reads != 1 {
			t.Fatalf("%d reads, want 1", s.reads)
		}
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Errorf("frame %d differs", i)
		}
	}
}

// testFrame builds frame seq of writer id: id, seq and a pattern both
// determine, so that the guest can check it.
func testFrame(id, seq int) []byte {
	sizes := []int{14, 60, 1514, 9000, MaxStreamFrame, 100, 4000, 65000}
	n := sizes[(seq+id)%len(sizes)] - (seq % 7)
	if n < 14 {
		n = 14
	}
	f := make([]byte, n)
	f[0] = byte(id)
	binary.BigEndian.PutUint32(f[1:], uint32(seq))
	for i := 5; i < n; i++ {
		f[i] = byte(i*31 + seq*7 + id*13)
	}
	return f
}

func checkTestFrame(f []byte) (id, seq int, err error) {
	if len(f) < 14 {
		return 0, 0, fmt.Errorf("frame of %d bytes", len(f))
	}
	id, seq = int(f[0]), int(binary.BigEndian.Uint32(f[1:]))
	if !bytes.Equal(f, testFrame(id, seq)) {
		return id, seq, fmt.Errorf("frame %d/%d (%d bytes) corrupt", id, seq, len(f))
	}
	return id, seq, nil
}

func TestStreamConcurrentWrites(t *testing.T) {
	s := listenTest(t, StreamConfig{FD: -1})
	reader(t, s, testBatch)
	g := dial(t, s.Path())
	guestConn(t, s)

	const writers, perWriter = 2, 1000
	type tally struct {
		frames int
		err    error
	}
	guestDone := make(chan tally, 1)
	stop := make(chan struct{})
	go func() {
		var tl tally
		last := []int{-1, -1}
		for {
			f, err := readFrame(g)
			if err != nil {
				select {
				case <-stop:
				default:
					tl.err = err
				}
				guestDone <- tl
				return
			}
			id, seq, err := checkTestFrame(f)
			if err == nil && (id >= writers || seq <= last[id]) {
				err = fmt.Errorf("frame %d/%d out of order", id, seq)
			}
			if err != nil {
				tl.err = err
				guestDone <- tl
				return
			}
			last[id] = seq
			tl.frames++
		}
	}()

	var wg sync.WaitGroup
	sent := make([]int, writers)
	dropped := make([]int, writers)
	for id := 0; id < writers; id++ {
		wg.Add(1)
		go func(id int) {
			defer wg.Done()
			for seq := 0; seq < perWriter; seq++ {
				err := s.WriteFrame(testFrame(id, seq))
				switch {
				case err == nil:
					sent[id]++
				case errors.Is(err, errGuestBusy):
					dropped[id]++
				default:
					t.Errorf("writer %d, frame %d: %v", id, seq, err)
					return
				}
			}
		}(id)
	}
	wg.Wait()
	total := sent[0] + sent[1]
	t.Logf("sent %v, dropped (socket buffer full) %v", sent, dropped)
	if total < writers*perWriter/2 {
		t.Errorf("only %d of %d frames sent", total, writers*perWriter)
	}
	// Let the guest catch up, then end the stream.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		q, _ := unix.IoctlGetInt(guestConn(t, s), unix.SIOCOUTQ)
		if q == 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	close(stop)
	g.CloseRead()
	tl := <-guestDone
	if tl.err != nil {
		t.Fatalf("guest: %v after %d frames", tl.err, tl.frames)
	}
	if tl.frames != total {
		t.Fatalf("guest got %d frames, %d sent", tl.frames, total)
	}
}

// shrinkSndbuf makes the Stream's socket buffer small, so that a large
// frame only goes out in pieces.
func shrinkSndbuf(t *testing.T, s *Stream) {
	t.Helper()
	if err := unix.SetsockoptInt(guestConn(t, s), unix.SOL_SOCKET, unix.SO_SNDBUF, 4096); err != nil {
		t.Fatal(err)
	}
}

func TestStreamShortWriteCompleted(t *testing.T) {
	s := listenTest(t, StreamConfig{FD: -1})
	reader(t, s, testBatch)
	g := dial(t, s.Path())
	shrinkSndbuf(t, s)

	const frames = 20
	errs := make(chan error, 1)
	go func() {
		for seq := 0; seq < frames; seq++ {
			f := testFrame(0, seq)
			f = append(f, make([]byte, MaxStreamFrame-len(f))...) // all large
			if err := s.WriteFrame(f); err != nil {
				errs <- fmt.Errorf("frame %d: %w", seq, err)
				return
			}
		}
		errs <- nil
	}()
	// The first frame cannot fit: the writer is waiting for room.
	time.Sleep(200 * time.Millisecond)
	g.SetReadDeadline(time.Now().Add(10 * time.Second))
	for seq := 0; seq < frames; seq++ {
		f, err := readFrame(g)
		if err != nil {
			t.Fatalf("frame %d: %v", seq, err)
		}
		want := testFrame(0, seq)
		want = append(want, make([]byte, MaxStreamFrame-len(want))...)
		if !bytes.Equal(f, want) {
			t.Fatalf("frame %d differs", seq)
		}
	}
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	s.wmu.Lock()
	waits := s.waits
	s.wmu.Unlock()
	if waits == 0 {
		t.Error("no frame had to wait for room: the test did not exercise short writes")
	}
	t.Logf("%d of %d frames finished after a short write", waits, frames)
}

func TestStreamStalledGuestDisconnected(t *testing.T) {
	lb := captureLog(t)
	disc := make(chan struct{}, 4)
	s := listenTest(t, StreamConfig{FD: -1, OnDisconnect: func() { disc <- struct{}{} }})
	ch := reader(t, s, testBatch)
	g := dial(t, s.Path())
	shrinkSndbuf(t, s)

	f := testFrame(0, 4) // MaxStreamFrame bytes
	start := time.Now()
	err := s.WriteFrame(f)
	took := time.Since(start)
	if err == nil || errors.Is(err, errGuestBusy) || errors.Is(err, ErrNoGuest) {
		t.Fatalf("WriteFrame to a stalled guest: %v", err)
	}
	if took < streamWriteTimeout-50*time.Millisecond || took > 3*streamWriteTimeout {
		t.Errorf("WriteFrame gave up after %v", took)
	}
	select {
	case <-disc:
	case <-time.After(5 * time.Second):
		t.Fatal("guest not disconnected")
	}
	if err := s.WriteFrame(f); !errors.Is(err, ErrNoGuest) {
		t.Errorf("WriteFrame after disconnect: %v, want ErrNoGuest", err)
	}
	// The guest sees part of the frame, then end of file: never
	// another frame's bytes in the middle of this one.
	g.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := readFrame(g); err != io.ErrUnexpectedEOF {
		t.Fatalf("guest read: %v, want a truncated frame", err)
	}
	var warn []string
	for _, l := range lb.lines() {
		if strings.Contains(l, "resetting") {
			warn = append(warn, l)
		}
	}
	if len(warn) != 1 {
		t.Errorf("log: %q, want one reset line", lb.lines())
	}

	// The next guest is served.
	g2 := dial(t, s.Path())
	if _, err := g2.Write(record(make([]byte, 60))); err != nil {
		t.Fatal(err)
	}
	collect(t, ch, 1)
}

func TestStreamBadLength(t *testing.T) {
	for _, bad := range []uint32{0, MaxStreamFrame + 1, 0xffffffff} {
		t.Run(fmt.Sprint(bad), func(t *testing.T) {
			lb := captureLog(t)
			disc := make(chan struct{}, 4)
			s := listenTest(t, StreamConfig{FD: -1, OnDisconnect: func() { disc <- struct{}{} }})
			ch := reader(t, s, testBatch)
			g := dial(t, s.Path())
			good := randFrame(rand.New(rand.NewSource(4)), 60)
			msg := record(good)
			msg = binary.BigEndian.AppendUint32(msg, bad)
			if _, err := g.Write(msg); err != nil {
				t.Fatal(err)
			}
			got := collect(t, ch, 1)
			if !bytes.Equal(got[0], good) {
				t.Error("frame before the bad length differs")
			}
			expectEOF(t, g)
			<-disc
			// Earlier tests may still log their ends: look at what
			// follows this guest's accept line.
			lines := lb.lines()
			for i := len(lines) - 1; i >= 0; i-- {
				if strings.Contains(lines[i], "accepted connection") {
					lines = lines[i+1:]
					break
				}
			}
			if len(lines) != 1 || !strings.HasSuffix(lines[0], fmt.Sprintf("bad frame size %d from guest, resetting connection", bad)) {
				t.Errorf("log after accept: %q, want one bad frame line", lines)
			}

			g2 := dial(t, s.Path())
			f := randFrame(rand.New(rand.NewSource(5)), 1514)
			if _, err := g2.Write(record(f)); err != nil {
				t.Fatal(err)
			}
			if got := collect(t, ch, 1); !bytes.Equal(got[0], f) {
				t.Error("frame from the new guest differs")
			}
		})
	}
}

func TestStreamReconnect(t *testing.T) {
	var mu sync.Mutex
	var events []string
	disc := make(chan struct{}, 16)
	hook := func(e string) func() {
		return func() {
			mu.Lock()
			events = append(events, e)
			mu.Unlock()
			if e == "disconnect" {
				disc <- struct{}{}
			}
		}
	}
	s := listenTest(t, StreamConfig{FD: -1, OnConnect: hook("connect"), OnDisconnect: hook("disconnect")})
	ch := reader(t, s, testBatch)
	rng := rand.New(rand.NewSource(6))
	const guests = 5
	for i := 0; i < guests; i++ {
		g := dial(t, s.Path())
		f := randFrame(rng, 100+i)
		// A trailing incomplete frame is dropped with the guest.
		msg := append(record(f), record(randFrame(rng, 500))[:200]...)
		if _, err := g.Write(msg); err != nil {
			t.Fatal(err)
		}
		if got := collect(t, ch, 1); !bytes.Equal(got[0], f) {
			t.Fatalf("guest %d: frame differs", i)
		}
		// Close and let the next guest connect at once: the Stream
		// must notice this one left before it judges the next.
		g.Close()
	}
	for i := 0; i < guests; i++ {
		select {
		case <-disc:
		case <-time.After(5 * time.Second):
			t.Fatalf("%d of %d disconnections seen", i, guests)
		}
	}
	s.Close()
	expectErr(t, ch, ErrClosed)
	mu.Lock()
	defer mu.Unlock()
	want := strings.TrimSpace(strings.Repeat("connect disconnect ", guests))
	if got := strings.Join(events, " "); got != want {
		t.Errorf("hooks: %s, want %s", got, want)
	}
}

func TestStreamSecondGuestDiscarded(t *testing.T) {
	s := listenTest(t, StreamConfig{FD: -1})
	ch := reader(t, s, testBatch)
	g1 := dial(t, s.Path())
	guestConn(t, s)
	g2 := dial(t, s.Path())
	expectEOF(t, g2)
	f := randFrame(rand.New(rand.NewSource(7)), 60)
	if _, err := g1.Write(record(f)); err != nil {
		t.Fatal(err)
	}
	if got := collect(t, ch, 1); !bytes.Equal(got[0], f) {
		t.Fatal("frame differs")
	}
	if err := s.WriteFrame(f); err != nil {
		t.Fatal(err)
	}
	g1.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got, err := readFrame(g1); err != nil || !bytes.Equal(got, f) {
		t.Fatalf("first guest: %v", err)
	}
}

func TestStreamOneOff(t *testing.T) {
	s := listenTest(t, StreamConfig{FD: -1, OneOff: true})
	ch := reader(t, s, testBatch)
	g := dial(t, s.Path())
	f := randFrame(rand.New(rand.NewSource(8)), 60)
	if _, err := g.Write(record(f)); err != nil {
		t.Fatal(err)
	}
	collect(t, ch, 1)
	g.Close()
	expectErr(t, ch, ErrClosed)
	bufs, lens := newBufs(1)
	if _, err := s.ReadBatch(bufs, lens); !errors.Is(err, ErrClosed) {
		t.Fatalf("ReadBatch again: %v", err)
	}
	if err := s.WriteFrame(f); !errors.Is(err, ErrNoGuest) {
		t.Fatalf("WriteFrame: %v", err)
	}
}

func TestStreamFD(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	gf := os.NewFile(uintptr(fds[1]), "guest")
	g, err := net.FileConn(gf)
	gf.Close()
	if err != nil {
		t.Fatal(err)
	}
	connected := make(chan struct{}, 2)
	s := listenTest(t, StreamConfig{FD: fds[0], OnConnect: func() { connected <- struct{}{} }})
	if s.Path() != "" {
		t.Errorf("Path() = %q with FD", s.Path())
	}
	ch := reader(t, s, testBatch)
	<-connected
	rng := rand.New(rand.NewSource(9))
	in, out := randFrame(rng, 1514), randFrame(rng, 65534)
	if _, err := g.Write(record(in)); err != nil {
		t.Fatal(err)
	}
	if got := collect(t, ch, 1); !bytes.Equal(got[0], in) {
		t.Fatal("frame from guest differs")
	}
	if err := s.WriteFrame(out); err != nil {
		t.Fatal(err)
	}
	g.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got, err := readFrame(g); err != nil || !bytes.Equal(got, out) {
		t.Fatalf("frame to guest: %v", err)
	}
	g.Close()
	expectErr(t, ch, ErrClosed)
	if len(connected) != 0 {
		t.Error("OnConnect ran twice")
	}
}

func TestStreamFDNotSocket(t *testing.T) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	if _, err := ListenStream(StreamConfig{FD: p[0]}); err == nil {
		t.Fatal("ListenStream accepted a pipe")
	}
}

// staleSocket leaves a socket file nobody listens on at path.
func staleSocket(t *testing.T, path string) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
}

// liveSocket listens at path until the test ends.
func liveSocket(t *testing.T, path string) net.Listener {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func TestStreamDefaultPath(t *testing.T) {
	um := unix.Umask(0)
	unix.Umask(um)

	t.Run("stale first, live second", func(t *testing.T) {
		dir := t.TempDir()
		t.Setenv("XDG_RUNTIME_DIR", dir)
		staleSocket(t, filepath.Join(dir, "passt_1.socket"))
		live := liveSocket(t, filepath.Join(dir, "passt_2.socket"))
		s := listenCfg(t, StreamConfig{FD: -1})
		if want := filepath.Join(dir, "passt_1.socket"); s.Path() != want {
			t.Fatalf("Path() = %s, want %s (the stale one, replaced)", s.Path(), want)
		}
		var st unix.Stat_t
		if err := unix.Stat(s.Path(), &st); err != nil {
			t.Fatal(err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFSOCK || st.Mode&0o777 != 0o777&^uint32(um) {
			t.Errorf("socket mode %o, want socket %o (umask %o)", st.Mode, 0o777&^um, um)
		}
		// Ours works, and passt_2's owner still has its socket.
		ch := reader(t, s, testBatch)
		g := dial(t, s.Path())
		g.Write(record(make([]byte, 60)))
		collect(t, ch, 1)
		c := dial(t, filepath.Join(dir, "passt_2.socket"))
		c.Close()
		a, err := live.Accept()
		if err != nil {
			t.Fatal(err)
		}
		a.Close()
		s.Close()
		if _, err := os.Lstat(filepath.Join(dir, "passt_1.socket")); !os.IsNotExist(err) {
			t.Errorf("socket file left after Close: %v", err)
		}
		if _, err := os.Lstat(filepath.Join(dir, "passt_2.socket")); err != nil {
			t.Errorf("passt_2.socket: %v", err)
		}
	})

	t.Run("live first, stale second", func(t *testing.T) {
		dir := t.TempDir()
		t.Setenv("XDG_RUNTIME_DIR", dir)
		liveSocket(t, filepath.Join(dir, "passt_1.socket"))
		staleSocket(t, filepath.Join(dir, "passt_2.socket"))
		s := listenCfg(t, StreamConfig{FD: -1})
		if want := filepath.Join(dir, "passt_2.socket"); s.Path() != want {
			t.Fatalf("Path() = %s, want %s", s.Path(), want)
		}
	})

	t.Run("not a socket is kept", func(t *testing.T) {
		dir := t.TempDir()
		t.Setenv("XDG_RUNTIME_DIR", dir)
		file := filepath.Join(dir, "passt_1.socket")
		if err := os.WriteFile(file, []byte("data"), 0o600); err != nil {
			t.Fatal(err)
		}
		s := listenCfg(t, StreamConfig{FD: -1})
		if want := filepath.Join(dir, "passt_2.socket"); s.Path() != want {
			t.Fatalf("Path() = %s, want %s", s.Path(), want)
		}
		if b, err := os.ReadFile(file); err != nil || string(b) != "data" {
			t.Errorf("regular file touched: %q, %v", b, err)
		}
	})

	t.Run("all taken", func(t *testing.T) {
		dir := t.TempDir()
		t.Setenv("XDG_RUNTIME_DIR", dir)
		for i := 1; i <= streamProbeMax; i++ {
			os.WriteFile(filepath.Join(dir, fmt.Sprintf("passt_%d.socket", i)), nil, 0o600)
		}
		if s, err := ListenStream(StreamConfig{FD: -1}); err == nil {
			s.Close()
			t.Fatalf("got %s with every path taken", s.Path())
		}
	})

	t.Run("runtime dir", func(t *testing.T) {
		dir := t.TempDir()
		for _, c := range []struct{ env, want string }{
			{dir, dir},
			{"", "/tmp"},
			{"relative/dir", "/tmp"},
			{filepath.Join(dir, "missing"), "/tmp"},
			{"/" + strings.Repeat("x", 100), "/tmp"},
		} {
			t.Setenv("XDG_RUNTIME_DIR", c.env)
			if got := streamRuntimeDir(); got != c.want {
				t.Errorf("XDG_RUNTIME_DIR=%q: %s, want %s", c.env, got, c.want)
			}
		}
		if os.Geteuid() != 0 {
			ro := filepath.Join(dir, "ro")
			os.Mkdir(ro, 0o500)
			t.Setenv("XDG_RUNTIME_DIR", ro)
			if got := streamRuntimeDir(); got != "/tmp" {
				t.Errorf("read-only XDG_RUNTIME_DIR: %s", got)
			}
		}
	})
}

func TestStreamExplicitPath(t *testing.T) {
	dir := t.TempDir()
	live := filepath.Join(dir, "live")
	liveSocket(t, live)
	if s, err := ListenStream(StreamConfig{Path: live, FD: -1}); err == nil {
		s.Close()
		t.Fatal("took over a live socket")
	}
	stale := filepath.Join(dir, "stale")
	staleSocket(t, stale)
	s := listenTest(t, StreamConfig{Path: stale, FD: -1})
	if s.Path() != stale {
		t.Fatalf("Path() = %s", s.Path())
	}
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o600)
	if s, err := ListenStream(StreamConfig{Path: file, FD: -1}); err == nil {
		s.Close()
		t.Fatal("replaced a regular file")
	}
}

func TestStreamClose(t *testing.T) {
	t.Run("waiting for a guest", func(t *testing.T) {
		s := listenTest(t, StreamConfig{FD: -1})
		ch := reader(t, s, testBatch)
		time.Sleep(50 * time.Millisecond)
		start := time.Now()
		s.Close()
		expectErr(t, ch, ErrClosed)
		if d := time.Since(start); d > time.Second {
			t.Errorf("ReadBatch took %v to return", d)
		}
		if _, err := os.Lstat(s.Path()); !os.IsNotExist(err) {
			t.Errorf("socket file after Close: %v", err)
		}
		if err := s.WriteFrame(make([]byte, 60)); !errors.Is(err, ErrClosed) {
			t.Errorf("WriteFrame after Close: %v", err)
		}
		bufs, lens := newBufs(1)
		if _, err := s.ReadBatch(bufs, lens); !errors.Is(err, ErrClosed) {
			t.Errorf("ReadBatch after Close: %v", err)
		}
		if err := s.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	})

	t.Run("guest connected", func(t *testing.T) {
		s := listenTest(t, StreamConfig{FD: -1})
		ch := reader(t, s, testBatch)
		g := dial(t, s.Path())
		guestConn(t, s)
		time.Sleep(20 * time.Millisecond)
		s.Close()
		expectErr(t, ch, ErrClosed)
		expectEOF(t, g)
	})

	t.Run("no reader", func(t *testing.T) {
		s := listenTest(t, StreamConfig{FD: -1})
		path := s.Path()
		s.Close()
		if _, err := os.Lstat(path); !os.IsNotExist(err) {
			t.Errorf("socket file after Close: %v", err)
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			t.Error("connected after Close")
		}
	})

	t.Run("file replaced", func(t *testing.T) {
		s := listenTest(t, StreamConfig{FD: -1})
		os.Remove(s.Path())
		liveSocket(t, s.Path())
		s.Close()
		if _, err := os.Lstat(s.Path()); err != nil {
			t.Errorf("Close removed someone else's socket: %v", err)
		}
	})

	t.Run("from a hook", func(t *testing.T) {
		var s *Stream
		s = listenTest(t, StreamConfig{FD: -1, OnConnect: func() { s.Close() }})
		ch := reader(t, s, testBatch)
		dial(t, s.Path())
		expectErr(t, ch, ErrClosed)
	})
}

func TestStreamWriteNoGuest(t *testing.T) {
	s := listenTest(t, StreamConfig{FD: -1})
	start := time.Now()
	if err := s.WriteFrame(make([]byte, 60)); !errors.Is(err, ErrNoGuest) {
		t.Fatalf("WriteFrame: %v", err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("WriteFrame took %v", d)
	}
	for _, n := range []int{0, MaxStreamFrame + 1} {
		if err := s.WriteFrame(make([]byte, n)); err == nil {
			t.Errorf("WriteFrame of %d bytes succeeded", n)
		}
	}
}

func TestStreamGuestReset(t *testing.T) {
	lb := captureLog(t)
	disc := make(chan struct{}, 4)
	s := listenTest(t, StreamConfig{FD: -1, OnDisconnect: func() { disc <- struct{}{} }})
	ch := reader(t, s, testBatch)
	g := dial(t, s.Path())
	guestConn(t, s)
	// Closing with unread data makes our side see ECONNRESET.
	if err := s.WriteFrame(make([]byte, 60)); err != nil {
		t.Fatal(err)
	}
	g.Close()
	select {
	case <-disc:
	case <-time.After(5 * time.Second):
		t.Fatal("guest not disconnected")
	}
	found := false
	for _, l := range lb.lines() {
		found = found || strings.Contains(l, "connection reset")
	}
	if !found {
		t.Errorf("log: %q, want a connection reset line", lb.lines())
	}
	g2 := dial(t, s.Path())
	f := randFrame(rand.New(rand.NewSource(10)), 60)
	if _, err := g2.Write(record(f)); err != nil {
		t.Fatal(err)
	}
	if got := collect(t, ch, 1); !bytes.Equal(got[0], f) {
		t.Fatal("frame from the new guest differs")
	}
}

// TestStreamWriteFramesMixed has one writer send batches with WriteFrames
// and another single frames with WriteFrame, through a small socket buffer
// so that batches are cut in the middle of frames: the guest must still
// read a clean stream holding exactly the frames reported sent, in order.
func TestStreamWriteFramesMixed(t *testing.T) {
	s := listenTest(t, StreamConfig{FD: -1})
	reader(t, s, testBatch)
	g := dial(t, s.Path())
	shrinkSndbuf(t, s)

	const perWriter = 300
	got := make(chan [2]int, 1) // frames read per writer
	failed := make(chan error, 1)
	go func() {
		var n [2]int
		last := []int{-1, -1}
		for {
			f, err := readFrame(g)
			if err != nil {
				got <- n
				return
			}
			id, seq, err := checkTestFrame(f)
			if err == nil && (id > 1 || seq <= last[id]) {
				err = fmt.Errorf("frame %d/%d out of order", id, seq)
			}
			if err != nil {
				failed <- err
				got <- n
				return
			}
			last[id] = seq
			n[id]++
		}
	}()

	var wg sync.WaitGroup
	var sent [2]int
	wg.Add(2)
	go func() { // single frames
		defer wg.Done()
		for seq := 0; seq < perWriter; seq++ {
			if err := s.WriteFrame(testFrame(0, seq)); err == nil {
				sent[0]++
			} else if !errors.Is(err, errGuestBusy) {
				t.Errorf("WriteFrame: %v", err)
				return
			}
		}
	}()
	go func() { // batches of five
		defer wg.Done()
		for seq := 0; seq < perWriter; seq += 5 {
			var batch [][]byte
			for k := 0; k < 5; k++ {
				batch = append(batch, testFrame(1, seq+k))
			}
			n, err := s.WriteFrames(batch)
			sent[1] += n
			if err != nil && !errors.Is(err, errGuestBusy) {
				t.Errorf("WriteFrames: %v", err)
				return
			}
			// Frames after a drop would break the order check: the
			// guest sees seq numbers increase, which still holds.
		}
	}()
	wg.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if q, _ := unix.IoctlGetInt(guestConn(t, s), unix.SIOCOUTQ); q == 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	g.CloseRead()
	n := <-got
	select {
	case err := <-failed:
		t.Fatal(err)
	default:
	}
	t.Logf("sent %v, guest read %v", sent, n)
	if n != sent {
		t.Fatalf("guest read %v frames, writers sent %v", n, sent)
	}
	if sent[1] == 0 {
		t.Fatal("no batch went out")
	}
}
