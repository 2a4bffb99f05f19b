package tap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopasst/gopasst/internal/log"
	"github.com/gopasst/gopasst/internal/yield"
)

// MaxStreamFrame is the largest frame, Ethernet header included, that the
// passt framing carries (the reference's L2_MAX_LEN_PASST, USHRT_MAX).
// A length prefix above it means the peer is broken.
const MaxStreamFrame = 65535

const (
	// streamReadBuf is how much one read from the guest asks for: many
	// frames per system call, and always room for a whole maximum-size
	// frame behind a kept partial one.
	streamReadBuf = 256 << 10
	// streamWriteTimeout bounds how long a writer that has sent part of a
	// frame waits for the guest to take the rest.
	streamWriteTimeout = time.Second
	// streamProbeMax is the last N tried for the default passt_N.socket.
	streamProbeMax = 64
	// streamSockBuf is what we ask for SO_SNDBUF and SO_RCVBUF on the
	// guest connection (the kernel caps it at wmem_max and rmem_max), as
	// the reference does.
	streamSockBuf = (1<<31 - 1) / 2
	// streamLenSize is the size of the length prefix.
	streamLenSize = 4
)

// ErrNoGuest is returned by [Stream.WriteFrame] when no guest is connected:
// the frame is dropped.
var ErrNoGuest = errors.New("no guest connected")

// errGuestBusy is returned by WriteFrame when the guest's socket buffer is
// full and nothing of the frame was sent: the frame is dropped, as the
// reference drops it, rather than stall the caller.
var errGuestBusy = errors.New("guest socket buffer full, frame dropped")

// StreamConfig configures [ListenStream].
type StreamConfig struct {
	// Path is the UNIX socket path to listen on (-s). Empty means probe
	// DIR/passt_1.socket to DIR/passt_64.socket and take the first that
	// nobody accepts connections on, where DIR is $XDG_RUNTIME_DIR when
	// set and writable, else /tmp. Ignored when FD is used.
	Path string
	// FD (-F) is an already connected stream socket, used when >= 0:
	// then there is no listener and OneOff is implied. The Stream owns it
	// from then on. Set it to -1 when not used: 0 is a valid descriptor.
	FD int
	// OneOff (-1) ends the Stream after its first guest: once that guest
	// disconnects, ReadBatch returns ErrClosed.
	OneOff bool
	// OnConnect, if set, runs on the ReadBatch goroutine when a guest is
	// connected (for FD, on the first ReadBatch call), before any of its
	// frames are returned. It may call WriteFrame, and must not call
	// ReadBatch.
	OnConnect func()
	// OnDisconnect, if set, runs on the ReadBatch goroutine after a guest
	// is disconnected, for whatever reason other than Close.
	OnDisconnect func()
}

// Stream is passt's guest endpoint: it serves one guest (qemu, with
// "-netdev stream,server=off,addr.type=unix,addr.path=PATH") at a time over
// a UNIX stream socket.
//
// # Framing
//
// Both directions carry Ethernet frames, each preceded by its length as a
// 32-bit big-endian number, with nothing else in between. A length of 0 or
// above [MaxStreamFrame] cannot come from a working peer: the connection
// is closed (one log line) and the Stream goes back to accepting. Frames
// shorter than an Ethernet header are passed up and the parser drops them
// (the reference resets the connection for those too). Frames before a bad
// length in the same read are still returned.
//
// # Reading and reassembly
//
// ReadBatch reads up to 256 KiB at a time and splits what it got into
// frames, copying each into one of the caller's buffers. The byte stream
// has no relation to the frame boundaries: one read may hold many frames,
// the tail of one and the start of the next, or a piece of a length
// prefix. Whatever follows the last complete frame stays in the read
// buffer and is topped up by the next read, so no byte is lost; complete
// frames that did not fit in the caller's batch are returned by the next
// call without another read. A partial frame left when the guest
// disconnects is dropped with it.
//
// # One guest at a time
//
// With no guest, ReadBatch sleeps in poll on the listening socket and an
// eventfd (which Close signals), and accepts the first guest. While a
// guest is connected, the listener stays in the poll set: as in the
// reference, a second client is accepted and closed at once, so it sees
// end of file instead of hanging in the backlog. When the guest hangs up
// (end of file, a receive error such as ECONNRESET, or a bad length), the
// connection is closed, OnDisconnect runs and ReadBatch waits for the
// next guest — or, with OneOff or FD, returns ErrClosed from then on.
//
// All descriptors belong to the ReadBatch goroutine: it alone accepts and
// closes connections, so a writer never uses a descriptor number that was
// closed and reused. A writer that has to give up on a guest only shuts
// the connection down; the reader then sees end of file and closes it.
//
// # Writing
//
// WriteFrame is called from several goroutines; a mutex keeps frames
// whole and in order. Each frame goes out with one sendmsg carrying the
// prefix and the frame (MSG_DONTWAIT|MSG_NOSIGNAL). If the socket buffer
// is full and nothing was sent, the frame is dropped, as in the reference.
// If only part of it was sent, the rest must follow or the stream would be
// corrupt: the writer waits in poll for the guest to make room, for at most
// one second in all, and if the guest does not drain in that time the
// connection is shut down rather than left with half a frame. With no
// guest connected, WriteFrame fails at once with [ErrNoGuest].
//
// # Closing
//
// Close signals the eventfd, which wakes a ReadBatch blocked in poll (and a
// writer waiting for room); the reader returns ErrClosed and releases the
// descriptors on its way out, or Close releases them itself when no
// ReadBatch is running. Close also removes the socket file, if the Stream
// created it and it is still the same file.
type Stream struct {
	path   string
	listen int // listening socket, -1 with FD
	wake   int // eventfd signalled by Close
	oneOff bool

	onConnect, onDisconnect func()

	// The socket file we created, to remove it on Close only if it is
	// still ours.
	fileDev, fileIno uint64

	// Owned by the ReadBatch goroutine.
	rbuf           []byte
	start, end     int  // unparsed bytes are rbuf[start:end]
	mustPoll       bool // the last read found the connection empty
	pendingConnect bool // FD: OnConnect has not run yet
	finished       bool // OneOff: the guest has gone
	reads          int  // read calls on connections, for tests
	pace           yield.Pacer

	// wmu serializes writers and guards conn and dead. The reader changes
	// conn only while holding it, and reads it without: it is the only
	// goroutine that changes it while ReadBatch runs.
	wmu  sync.Mutex
	conn int // guest connection, -1 if none
	// dead, when not empty, says a writer shut the connection down, and
	// why; the reader logs it when it closes the connection.
	dead string
	// waits counts frames that needed more than one sendmsg, for tests.
	waits int
	// hdrs and iov are WriteFrames' length prefixes and buffer list,
	// reused under wmu.
	hdrs [][streamLenSize]byte
	iov  [][]byte

	closedFlag atomic.Bool // Close was called; cheap check for writers

	// smu guards the hand-over of descriptors between ReadBatch and Close.
	smu      sync.Mutex
	closed   bool
	reading  int
	released bool
}

// ListenStream creates a Stream as cfg says: it binds and listens on the
// socket path (probing a free one if cfg.Path is empty), or adopts the
// connected socket cfg.FD.
func ListenStream(cfg StreamConfig) (*Stream, error) {
	s := &Stream{
		listen:       -1,
		wake:         -1,
		conn:         -1,
		oneOff:       cfg.OneOff,
		onConnect:    cfg.OnConnect,
		onDisconnect: cfg.OnDisconnect,
		rbuf:         make([]byte, streamReadBuf),
	}
	if cfg.FD >= 0 {
		if err := checkStreamFD(cfg.FD); err != nil {
			return nil, err
		}
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	s.wake = wake
	if cfg.FD >= 0 {
		if err := unix.SetNonblock(cfg.FD, true); err != nil {
			unix.Close(wake)
			return nil, fmt.Errorf("fd %d: %w", cfg.FD, err)
		}
		setStreamBufs(cfg.FD)
		s.conn = cfg.FD
		s.oneOff = true
		s.pendingConnect = true
		return s, nil
	}
	fd, path, err := bindStream(cfg.Path)
	if err != nil {
		unix.Close(wake)
		return nil, err
	}
	// The reference listens with a backlog of 0: one client may wait.
	if err := unix.Listen(fd, 0); err != nil {
		unix.Close(fd)
		unix.Close(wake)
		_ = os.Remove(path)
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	s.listen, s.path = fd, path
	var st unix.Stat_t
	if unix.Lstat(path, &st) == nil {
		s.fileDev, s.fileIno = st.Dev, st.Ino
	}
	return s, nil
}

// checkStreamFD makes sure fd is a stream socket.
func checkStreamFD(fd int) error {
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return fmt.Errorf("fd %d is not a socket: %w", fd, err)
	}
	if typ != unix.SOCK_STREAM {
		return fmt.Errorf("fd %d is not a stream socket", fd)
	}
	return nil
}

// streamRuntimeDir is where default socket paths go: $XDG_RUNTIME_DIR when
// it is an absolute path to a directory we can create files in, else /tmp.
func streamRuntimeDir() string {
	dir := os.Getenv("XDG_RUNTIME_DIR")
	if dir == "" || !filepath.IsAbs(dir) {
		return "/tmp"
	}
	// Leave room for "/passt_64.socket" in sun_path (108 bytes with NUL).
	if len(dir)+len("/passt_64.socket") >= len(unix.RawSockaddrUnix{}.Path) {
		return "/tmp"
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return "/tmp"
	}
	if unix.Access(dir, unix.W_OK|unix.X_OK) != nil {
		return "/tmp"
	}
	return dir
}

// bindStream creates the listening socket bound at path, or at the first
// free default path if path is empty, and returns it with the path used.
//
// A path is free, as in the reference, if connecting to it fails with
// ENOENT (no file), ECONNREFUSED (a stale socket nobody listens on) or
// EACCES; a stale socket file is then removed and replaced. Anything else,
// a successful connection included, means someone is serving there.
// Unlike the reference, a file that is not a socket is never removed.
func bindStream(path string) (int, string, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, "", fmt.Errorf("UNIX domain socket: %w", err)
	}
	if path != "" {
		if !streamPathFree(path) {
			unix.Close(fd)
			return -1, "", fmt.Errorf("socket path %s already in use", path)
		}
		if err := removeStaleSocket(path); err != nil {
			unix.Close(fd)
			return -1, "", err
		}
		if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
			unix.Close(fd)
			return -1, "", fmt.Errorf("bind UNIX domain socket %s: %w", path, err)
		}
		return fd, path, nil
	}
	dir := streamRuntimeDir()
	for i := 1; i <= streamProbeMax; i++ {
		p := filepath.Join(dir, fmt.Sprintf("passt_%d.socket", i))
		if !streamPathFree(p) || removeStaleSocket(p) != nil {
			continue
		}
		if unix.Bind(fd, &unix.SockaddrUnix{Name: p}) == nil {
			return fd, p, nil
		}
	}
	unix.Close(fd)
	return -1, "", fmt.Errorf("no free UNIX domain socket path from %s to %s",
		filepath.Join(dir, "passt_1.socket"), filepath.Join(dir, fmt.Sprintf("passt_%d.socket", streamProbeMax)))
}

// streamPathFree reports whether nobody accepts connections at path.
func streamPathFree(path string) bool {
	ex, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(ex)
	err = unix.Connect(ex, &unix.SockaddrUnix{Name: path})
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ECONNREFUSED) || errors.Is(err, unix.EACCES)
}

// removeStaleSocket removes the socket file at path, if any. It fails if
// path exists and is not a socket. A socket that cannot be removed (say,
// another user's) is left alone: bind then fails on it.
func removeStaleSocket(path string) error {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return nil
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fmt.Errorf("%s exists and is not a socket", path)
	}
	_ = unix.Unlink(path)
	return nil
}

// setStreamBufs asks for large socket buffers on a guest connection, as
// the reference does; failure is harmless.
func setStreamBufs(fd int) {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, streamSockBuf); err != nil {
		log.Tracef("tap: failed to set SO_RCVBUF: %v", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, streamSockBuf); err != nil {
		log.Tracef("tap: failed to set SO_SNDBUF: %v", err)
	}
}

// Path returns the path of the listening socket, or "" with FD.
func (s *Stream) Path() string { return s.path }

// ReadBatch implements Endpoint. It waits for a guest if none is
// connected, then blocks until at least one frame arrives, and fills bufs
// and lens with up to len(bufs) frames. A frame longer than its buffer is
// truncated (buffers of 65536 bytes hold any frame). Only one goroutine
// may call ReadBatch at a time.
func (s *Stream) ReadBatch(bufs [][]byte, lens []int) (int, error) {
	s.smu.Lock()
	if s.closed {
		s.smu.Unlock()
		return 0, ErrClosed
	}
	s.reading++
	s.smu.Unlock()
	defer func() {
		s.smu.Lock()
		s.reading--
		if s.closed && s.reading == 0 {
			s.release()
		}
		s.smu.Unlock()
	}()
	if len(lens) < len(bufs) {
		bufs = bufs[:len(lens)]
	}
	if len(bufs) == 0 {
		return 0, nil
	}
	n, err := s.readBatch(bufs, lens)
	if n > 0 {
		s.pace.Tick(yield.Now())
	}
	return n, err
}

func (s *Stream) readBatch(bufs [][]byte, lens []int) (int, error) {
	pfd := make([]unix.PollFd, 0, 3)
	for {
		if s.conn < 0 {
			if s.finished || s.listen < 0 {
				return 0, ErrClosed
			}
			if err := s.accept(); err != nil {
				return 0, err
			}
			continue
		}
		if s.pendingConnect {
			s.pendingConnect = false
			if s.onConnect != nil {
				s.onConnect()
			}
		}

		n, bad, isBad := s.parse(bufs, lens)
		if n > 0 {
			return n, nil
		}
		if isBad {
			s.start, s.end = 0, 0 // the rest is garbage, not a partial frame
			s.disconnect(log.LevelWarn, fmt.Sprintf("bad frame size %d from guest, resetting connection", bad))
			continue
		}

		if !s.mustPoll {
			if err := s.fill(); err != nil {
				if errors.Is(err, unix.EAGAIN) {
					s.mustPoll = true
				} else if err == errEOF {
					// The OnDisconnect hook is the place for an
					// informational line; this one is for debugging.
					s.disconnect(log.LevelDebug, "guest closed the connection")
				} else {
					s.disconnect(log.LevelWarn, fmt.Sprintf("receive error on guest connection, resetting it: %v", err))
				}
			}
			continue
		}

		pfd = append(pfd[:0],
			unix.PollFd{Fd: int32(s.wake), Events: unix.POLLIN},
			unix.PollFd{Fd: int32(s.conn), Events: unix.POLLIN | unix.POLLRDHUP})
		if s.listen >= 0 {
			pfd = append(pfd, unix.PollFd{Fd: int32(s.listen), Events: unix.POLLIN})
		}
		if _, err := unix.Poll(pfd, -1); err != nil && !errors.Is(err, unix.EINTR) {
			return 0, fmt.Errorf("poll: %w", err)
		}
		if pfd[0].Revents != 0 {
			return 0, ErrClosed
		}
		if pfd[1].Revents != 0 {
			// Data, end of file or an error: the next read tells.
			s.mustPoll = false
		} else if len(pfd) > 2 && pfd[2].Revents != 0 {
			// Only judge a newcomer when the guest's connection is
			// quiet, so a guest that just left is noticed first and its
			// successor is accepted rather than discarded.
			if pfd[2].Revents&(unix.POLLERR|unix.POLLHUP|unix.POLLNVAL) != 0 {
				return 0, errors.New("error on listening UNIX socket")
			}
			s.discard()
		}
	}
}

// errEOF marks the guest's end of file in fill.
var errEOF = errors.New("EOF")

// fill reads once from the guest, after moving unparsed bytes to the start
// of the buffer. There is always room: what is left after parsing is less
// than one frame and its prefix.
func (s *Stream) fill() error {
	if s.start > 0 {
		s.end = copy(s.rbuf, s.rbuf[s.start:s.end])
		s.start = 0
	}
	for {
		s.reads++
		n, err := unix.Read(s.conn, s.rbuf[s.end:])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return errEOF
		}
		s.end += n
		return nil
	}
}

// parse moves complete frames from the read buffer to bufs, up to
// len(bufs). If it stops at a length prefix that is out of range, it
// returns that length and isBad; frames before it are returned first.
func (s *Stream) parse(bufs [][]byte, lens []int) (n int, bad uint32, isBad bool) {
	for n < len(bufs) && s.end-s.start >= streamLenSize {
		l := binary.BigEndian.Uint32(s.rbuf[s.start:])
		if l == 0 || l > MaxStreamFrame {
			return n, l, true
		}
		next := s.start + streamLenSize + int(l)
		if next > s.end {
			break // incomplete: keep it for the next read
		}
		lens[n] = copy(bufs[n], s.rbuf[s.start+streamLenSize:next])
		s.start = next
		n++
	}
	if s.start == s.end {
		s.start, s.end = 0, 0
	}
	return n, 0, false
}

// accept waits for a guest and makes it the current one. It returns
// ErrClosed if Close is called meanwhile.
func (s *Stream) accept() error {
	pfd := []unix.PollFd{
		{Fd: int32(s.wake), Events: unix.POLLIN},
		{Fd: int32(s.listen), Events: unix.POLLIN},
	}
	warned := false
	for {
		fd, _, err := unix.Accept4(s.listen, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err == nil {
			s.attach(fd)
			return nil
		}
		timeout := -1
		switch {
		case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR), errors.Is(err, unix.ECONNABORTED):
		default:
			// Out of descriptors or memory: back off and retry, without
			// filling the log.
			if !warned {
				log.Warnf("error accepting guest connection: %v", err)
				warned = true
			}
			timeout = 100
		}
		if _, err := unix.Poll(pfd, timeout); err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("poll: %w", err)
		}
		if pfd[0].Revents != 0 {
			return ErrClosed
		}
		if pfd[1].Revents&(unix.POLLERR|unix.POLLHUP|unix.POLLNVAL) != 0 {
			return errors.New("error on listening UNIX socket")
		}
	}
}

// attach makes fd, just accepted, the guest's connection.
func (s *Stream) attach(fd int) {
	if uc, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
		log.Infof("accepted connection from PID %d", uc.Pid)
	}
	setStreamBufs(fd)
	s.wmu.Lock()
	s.conn, s.dead = fd, ""
	s.wmu.Unlock()
	s.start, s.end, s.mustPoll = 0, 0, false
	s.pendingConnect = true
}

// discard accepts a client that came while a guest is connected and closes
// it at once, as the reference does.
func (s *Stream) discard() {
	fd, _, err := unix.Accept4(s.listen, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
	if err != nil {
		return
	}
	if uc, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
		log.Infof("discarding connection from PID %d: a guest is already connected", uc.Pid)
	} else {
		log.Infof("discarding connection: a guest is already connected")
	}
	unix.Close(fd)
}

// disconnect closes the guest's connection, logging one line: why, at
// level, unless a writer gave up on the guest first, which then says why.
func (s *Stream) disconnect(level log.Level, why string) {
	s.wmu.Lock()
	fd := s.conn
	s.conn = -1
	if s.dead != "" {
		level, why = log.LevelWarn, s.dead
		s.dead = ""
	}
	s.wmu.Unlock()
	unix.Close(fd)

	if partial := s.end - s.start; partial > 0 {
		why += fmt.Sprintf(" (%d bytes of an incomplete frame dropped)", partial)
	}
	s.start, s.end, s.mustPoll = 0, 0, false
	s.pendingConnect = false
	if s.oneOff {
		s.finished = true
		why += ", no more guests (one-off)"
		level = min(level, log.LevelInfo)
	}
	switch {
	case level <= log.LevelWarn:
		log.Warnf("%s", why)
	case level == log.LevelInfo:
		log.Infof("%s", why)
	default:
		log.Debugf("%s", why)
	}
	if s.onDisconnect != nil {
		s.onDisconnect()
	}
}

// WriteFrame implements Endpoint: it sends frame, prefixed by its length,
// to the guest. It is safe for concurrent use; frames never interleave.
// It fails at once with ErrNoGuest if no guest is connected, and drops
// the frame if the guest's socket buffer is full.
func (s *Stream) WriteFrame(frame []byte) error {
	if len(frame) == 0 || len(frame) > MaxStreamFrame {
		return fmt.Errorf("frame of %d bytes cannot be sent to the guest", len(frame))
	}
	var hdr [streamLenSize]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(frame)))

	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.closedFlag.Load() {
		return ErrClosed
	}
	if s.conn < 0 || s.dead != "" {
		return ErrNoGuest
	}
	total := streamLenSize + len(frame)
	n, err := s.send(hdr[:], frame, 0)
	if err != nil {
		if errors.Is(err, unix.EAGAIN) {
			return errGuestBusy
		}
		return err
	}
	if n == total {
		return nil
	}
	return s.finish(hdr[:], frame, n)
}

// WriteFrames sends frames to the guest with as few sendmsg calls as the
// socket allows: one call carries every length prefix and frame. A frame
// cut short by a full socket buffer is completed as in WriteFrame; frames
// that did not go out at all are dropped. It returns how many frames were
// sent whole.
func (s *Stream) WriteFrames(frames [][]byte) (int, error) {
	for _, f := range frames {
		if len(f) == 0 || len(f) > MaxStreamFrame {
			return 0, fmt.Errorf("frame of %d bytes cannot be sent to the guest", len(f))
		}
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.closedFlag.Load() {
		return 0, ErrClosed
	}
	if s.conn < 0 || s.dead != "" {
		return 0, ErrNoGuest
	}
	if cap(s.hdrs) < len(frames) {
		s.hdrs = make([][streamLenSize]byte, len(frames))
		s.iov = make([][]byte, 0, 2*len(frames))
	}
	sent := 0
	for sent < len(frames) {
		s.iov = s.iov[:0]
		for i, f := range frames[sent:] {
			h := &s.hdrs[i]
			binary.BigEndian.PutUint32(h[:], uint32(len(f)))
			s.iov = append(s.iov, h[:], f)
		}
		n, err := s.sendIov()
		if err != nil {
			if errors.Is(err, unix.EAGAIN) {
				return sent, errGuestBusy
			}
			return sent, err
		}
		// Count the frames that went out whole; finish a cut one.
		for n > 0 {
			f := frames[sent]
			whole := streamLenSize + len(f)
			if n < whole {
				hdr := s.hdrs[0] // rewritten below: keep this frame's prefix
				binary.BigEndian.PutUint32(hdr[:], uint32(len(f)))
				if err := s.finish(hdr[:], f, n); err != nil {
					return sent, err
				}
				n = whole
			}
			n -= whole
			sent++
		}
	}
	return sent, nil
}

// sendIov writes s.iov with one sendmsg.
func (s *Stream) sendIov() (int, error) {
	for {
		n, err := unix.SendmsgBuffers(s.conn, s.iov, nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return n, err
	}
}

// send writes prefix and frame from byte off of the two on, with one
// sendmsg, and returns how many bytes went out.
func (s *Stream) send(hdr, frame []byte, off int) (int, error) {
	var bufs [][]byte
	if off < len(hdr) {
		bufs = [][]byte{hdr[off:], frame}
	} else {
		bufs = [][]byte{frame[off-len(hdr):]}
	}
	for {
		n, err := unix.SendmsgBuffers(s.conn, bufs, nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return n, err
	}
}

// finish sends the rest of a frame of which off bytes (prefix included)
// went out, waiting for room for at most streamWriteTimeout in all. If it
// cannot, it shuts the connection down, so that the guest never sees the
// frame's tail replaced by another frame. Called with wmu held.
func (s *Stream) finish(hdr, frame []byte, off int) error {
	total := len(hdr) + len(frame)
	s.waits++
	deadline := time.Now().Add(streamWriteTimeout)
	pfd := []unix.PollFd{
		{Fd: int32(s.conn), Events: unix.POLLOUT},
		{Fd: int32(s.wake), Events: unix.POLLIN},
	}
	for off < total {
		left := time.Until(deadline)
		if left <= 0 {
			return s.kill(fmt.Sprintf("guest did not take the last %d bytes of a %d-byte frame within %v, resetting connection",
				total-off, len(frame), streamWriteTimeout))
		}
		ms := int((left + time.Millisecond - 1) / time.Millisecond)
		if _, err := unix.Poll(pfd, ms); err != nil && !errors.Is(err, unix.EINTR) {
			return s.kill(fmt.Sprintf("poll on guest connection failed (%v), resetting it", err))
		}
		if pfd[1].Revents != 0 {
			return ErrClosed
		}
		if pfd[0].Revents == 0 {
			continue
		}
		n, err := s.send(hdr, frame, off)
		if errors.Is(err, unix.EAGAIN) {
			continue
		}
		if err != nil {
			return s.kill(fmt.Sprintf("send error in the middle of a frame (%v), resetting connection", err))
		}
		off += n
	}
	return nil
}

// kill shuts the guest's connection down after a failed write and records
// why; the reader then sees end of file, closes the connection and logs
// the reason. Called with wmu held.
func (s *Stream) kill(why string) error {
	s.dead = why
	_ = unix.Shutdown(s.conn, unix.SHUT_RDWR)
	return errors.New(why)
}

// Close implements Endpoint. It wakes a blocked ReadBatch, which returns
// ErrClosed, closes the listener and any guest connection, and removes the
// socket file the Stream created. It may be called more than once and
// from any goroutine, including from the hooks.
func (s *Stream) Close() error {
	s.smu.Lock()
	if s.closed {
		s.smu.Unlock()
		return nil
	}
	s.closed = true
	s.closedFlag.Store(true)
	one := [8]byte{1}
	_, _ = unix.Write(s.wake, one[:]) // any non-zero count wakes poll
	if s.reading == 0 {
		s.release()
	}
	s.smu.Unlock()

	if s.path != "" {
		var st unix.Stat_t
		if unix.Lstat(s.path, &st) == nil && st.Dev == s.fileDev && st.Ino == s.fileIno {
			_ = unix.Unlink(s.path)
		}
	}
	return nil
}

// release closes all descriptors. Called with smu held, once Close was
// called and no ReadBatch runs.
func (s *Stream) release() {
	if s.released {
		return
	}
	s.released = true
	s.wmu.Lock()
	if s.conn >= 0 {
		unix.Close(s.conn)
		s.conn = -1
	}
	if s.listen >= 0 {
		unix.Close(s.listen)
		s.listen = -1
	}
	unix.Close(s.wake)
	s.wake = -1
	s.wmu.Unlock()
}
