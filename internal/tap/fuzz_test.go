package tap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// streamModel splits a byte stream of the passt framing the plain way:
// 4-byte big-endian lengths, each followed by that many bytes. It
// returns the complete frames before the first bad length (0 or above
// MaxStreamFrame) or the end, and whether it stopped at a bad length.
func streamModel(data []byte) (frames [][]byte, bad bool) {
	for len(data) >= streamLenSize {
		l := binary.BigEndian.Uint32(data)
		if l == 0 || l > MaxStreamFrame {
			return frames, true
		}
		if uint64(len(data)-streamLenSize) < uint64(l) {
			break
		}
		frames = append(frames, data[streamLenSize:streamLenSize+int(l)])
		data = data[streamLenSize+int(l):]
	}
	return frames, false
}

// records joins frames in the passt framing.
func records(frames ...[]byte) []byte {
	var b []byte
	for _, f := range frames {
		b = append(b, record(f)...)
	}
	return b
}

// streamSeeds are byte streams for both targets: frames of several
// sizes, then an incomplete frame, a zero length or a length too large.
func streamSeeds() [][]byte {
	eth := bytes.Repeat([]byte{0xab}, 60)
	big := bytes.Repeat([]byte{0xcd}, 9000)
	return [][]byte{
		records(eth),
		records(eth, big, eth[:1]),
		append(records(eth), record(big)[:100]...),
		append(records(eth), 0, 0, 0, 0, 1, 2, 3),
		append(records(eth), 0, 1, 0, 0),
		{0, 0, 0xff, 0xff},
		{0, 0},
	}
}

// chunks cuts data into the pieces that reads return: each byte of cuts
// gives the length of the next piece (1 to 256 bytes, or up to 64 KiB
// for 255), repeating; no cuts means one piece.
func chunks(data, cuts []byte) [][]byte {
	var out [][]byte
	for i := 0; len(data) > 0; i++ {
		n := len(data)
		if len(cuts) > 0 {
			c := int(cuts[i%len(cuts)])
			n = c + 1
			if c == 255 {
				n = 65536
			}
		}
		n = min(n, len(data))
		out = append(out, data[:n])
		data = data[n:]
	}
	return out
}

// FuzzStreamParse drives the Stream's frame splitter (parse, and the
// buffer handling of fill) over an arbitrary byte stream arriving in
// arbitrary pieces, with batches of 1 to 8 buffers. It must return
// exactly the frames of the plain model, in order, stop at a bad length
// where the model does, and never run out of room in its read buffer.
func FuzzStreamParse(f *testing.F) {
	for i, s := range streamSeeds() {
		f.Add(s, []byte{byte(i * 37)}, uint8(i))
	}
	f.Add(records(bytes.Repeat([]byte{1}, MaxStreamFrame), []byte{2}), []byte{255, 3, 255, 255, 0}, uint8(3))
	bufs, lens := newBufs(8)
	f.Fuzz(func(t *testing.T, data, cuts []byte, batch uint8) {
		want, wantBad := streamModel(data)
		s := &Stream{rbuf: make([]byte, streamReadBuf)}
		pieces := chunks(data, cuts)
		nb := 1 + int(batch)%len(bufs)
		var got [][]byte
		bad := false
		for {
			n, l, isBad := s.parse(bufs[:nb], lens[:nb])
			for i := range n {
				got = append(got, bytes.Clone(bufs[i][:lens[i]]))
			}
			if n > 0 {
				continue
			}
			if isBad {
				if l != 0 && l <= MaxStreamFrame {
					t.Fatalf("bad length %d", l)
				}
				bad = true
				break
			}
			if len(pieces) == 0 {
				break // end of file: a partial frame is dropped
			}
			// fill: move what is left to the front, read into the rest.
			if s.start > 0 {
				s.end = copy(s.rbuf, s.rbuf[s.start:s.end])
				s.start = 0
			}
			if s.end >= len(s.rbuf) {
				t.Fatalf("read buffer full with %d unparsed bytes", s.end)
			}
			k := copy(s.rbuf[s.end:], pieces[0])
			s.end += k
			if pieces[0] = pieces[0][k:]; len(pieces[0]) == 0 {
				pieces = pieces[1:]
			}
		}
		checkFrames(t, got, want, bad, wantBad)
	})
}

func checkFrames(t *testing.T, got, want [][]byte, bad, wantBad bool) {
	t.Helper()
	if bad != wantBad {
		t.Fatalf("bad length seen %v, model %v", bad, wantBad)
	}
	if len(got) != len(want) {
		t.Fatalf("%d frames, model %d", len(got), len(want))
	}
	for i := range got {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("frame %d: %d bytes differ from the model's %d", i, len(got[i]), len(want[i]))
		}
	}
}

// FuzzStream writes an arbitrary byte stream, in arbitrary pieces, into a
// real connection (a socket pair, the -F way) while ReadBatch reads it
// with batches of 1 to 8 buffers. The frames must be the model's; after
// the end of the stream or a bad length the one-off Stream must report
// ErrClosed, within a few seconds.
func FuzzStream(f *testing.F) {
	for i, s := range streamSeeds() {
		f.Add(s, []byte{byte(i * 37)}, uint8(i))
	}
	bufs, lens := newBufs(8)
	f.Fuzz(func(t *testing.T, data, cuts []byte, batch uint8) {
		if len(data) > 1<<20 {
			return
		}
		want, wantBad := streamModel(data)
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		s, err := ListenStream(StreamConfig{FD: fds[0]})
		if err != nil {
			unix.Close(fds[1])
			t.Fatal(err)
		}
		defer s.Close()
		wrote := make(chan struct{})
		go func() {
			defer close(wrote)
			defer unix.Close(fds[1])
			for _, c := range chunks(data, cuts) {
				// Errors are expected once the reader gave up on a bad
				// length.
				if _, err := unix.SendmsgN(fds[1], c, nil, nil, unix.MSG_NOSIGNAL); err != nil {
					return
				}
			}
		}()
		watchdog := time.AfterFunc(10*time.Second, func() { s.Close() })
		defer watchdog.Stop()
		nb := 1 + int(batch)%len(bufs)
		var got [][]byte
		for {
			n, err := s.ReadBatch(bufs[:nb], lens[:nb])
			if errors.Is(err, ErrClosed) {
				break
			}
			if err != nil {
				t.Fatalf("ReadBatch: %v", err)
			}
			if n == 0 || n > nb {
				t.Fatalf("ReadBatch returned %d frames with %d buffers", n, nb)
			}
			for i := range n {
				got = append(got, bytes.Clone(bufs[i][:lens[i]]))
			}
		}
		if !watchdog.Stop() {
			t.Fatal("ReadBatch did not end within 10 s")
		}
		<-wrote
		// A bad length ends the connection where it is found: the
		// frames before it are all there is.
		checkFrames(t, got, want, wantBad, wantBad)
	})
}
