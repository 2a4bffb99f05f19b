package ctl

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopasst/gopasst/internal/conf"
	"github.com/gopasst/gopasst/internal/engine"
	"github.com/gopasst/gopasst/internal/evloop"
	"github.com/gopasst/gopasst/internal/flow"
	"github.com/gopasst/gopasst/internal/log"
)

// clientTimeout bounds one client's whole conversation: a client that
// stalls cannot keep others out for longer.
const clientTimeout = 10 * time.Second

// Server is a control socket: it listens on a UNIX stream socket and
// serves one client at a time, on a goroutine of its own.
type Server struct {
	*state
	path string
	ln   *net.UnixListener
	// uid is the only user that may connect: the one that started
	// gopasst (as seen in gopasst's user namespace). Atomic for tests.
	uid     atomic.Uint32
	refused atomic.Uint64
	served  atomic.Uint64
	done    chan struct{}
}

// Start opens the control socket of --conf-path for engine eng (whose
// namespace side listens when splice is set) and serves it until Close.
// It returns a nil Server, which Close accepts, when cfg has no
// --conf-path. Call it before the sandbox: the socket is bound to a path.
func Start(cfg *conf.Config, eng *engine.Engine, splice bool) (*Server, error) {
	if cfg.ConfPath == "" {
		return nil, nil
	}
	eph, err := conf.SystemEphemeralRange()
	if err != nil {
		eph = conf.DefaultEphemeral
	}
	return Listen(cfg.ConfPath, Config{
		Mode: cfg.Mode, Eng: eng, Flows: eng.Flows, Stats: eng.Stats,
		IPv4: eng.IPv4, IPv6: eng.IPv6, IPv4Only: cfg.IPv4Only, IPv6Only: cfg.IPv6Only,
		Splice: splice, Ephemeral: eph,
		TCP: cfg.TCPFwd, UDP: cfg.UDPFwd, TCPNS: cfg.TCPNSFwd, UDPNS: cfg.UDPNSFwd,
	})
}

// Listen binds the control socket at path, mode 0600, and starts serving
// it. An existing socket at path that nothing listens on any more is
// replaced; anything else there is refused.
func Listen(path string, cfg Config) (*Server, error) {
	ln, err := listen(path)
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	s := &Server{state: newState(cfg), path: path, ln: ln, done: make(chan struct{})}
	s.uid.Store(uint32(os.Geteuid()))
	log.Infof("Configuration socket: %s", path)
	go s.serve()
	return s, nil
}

func listen(path string) (*net.UnixListener, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err == nil {
		if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
			return nil, errors.New("exists and is not a socket")
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		switch {
		case err == nil:
			c.Close()
			return nil, errors.New("in use by another server")
		case !errors.Is(err, unix.ECONNREFUSED):
			return nil, err
		}
		if err := os.Remove(path); err != nil {
			return nil, err
		}
	}
	// Bound with no permissions for the group and others, and then made
	// 0600, so that no other user can ever connect.
	old := unix.Umask(0o177)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	unix.Umask(old)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// Path is the socket's path.
func (s *Server) Path() string { return s.path }

// Refused is the number of clients refused for their user.
func (s *Server) Refused() uint64 { return s.refused.Load() }

// Close stops serving, waits for a client being served and removes the
// socket (sandboxed, the sandbox's helper removes it instead).
func (s *Server) Close() {
	if s == nil {
		return
	}
	s.ln.Close()
	<-s.done
}

func (s *Server) serve() {
	defer close(s.done)
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors, say: the client waits in the backlog.
			log.Debugf("control: accept: %v", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		s.handle(c)
	}
}

// peer returns the credentials of c's client.
func peer(c *net.UnixConn) (*unix.Ucred, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, cerr
}

// handle serves one client: the hello and the tables, then a pesto
// update (and possibly a request for its outcome), an extension request,
// or nothing.
func (s *Server) handle(c *net.UnixConn) {
	defer c.Close()
	cred, err := peer(c)
	if err != nil || cred.Uid != s.uid.Load() {
		n := s.refused.Add(1)
		who := "unknown"
		if cred != nil {
			who = fmt.Sprintf("uid %d, pid %d", cred.Uid, cred.Pid)
		}
		if n == 1 {
			log.Warnf("control socket: refused a client (%s): only uid %d may connect (further refusals are logged at debug level)", who, s.uid.Load())
		} else {
			log.Debugf("control socket: refused a client (%s), %d so far", who, n)
		}
		return
	}
	s.served.Add(1)
	_ = c.SetDeadline(time.Now().Add(clientTimeout))
	log.Debugf("control: client pid %d", cred.Pid)
	out, err := AppendTables(AppendHello(nil), s.Tables())
	if err != nil {
		log.Warnf("control: %v", err)
		return
	}
	if _, err := c.Write(out); err != nil {
		return
	}
	r := bufio.NewReader(c)
	b, err := r.ReadByte()
	if err != nil {
		return // a client that only looked
	}
	var result error
	switch b {
	case extMarker:
		s.reply(c, s.request(r, false, nil))
		return
	case PIFNone:
		// An update of no table: nothing changes.
	default:
		us, err := ReadUpdateBody(r, b)
		if err != nil {
			log.Warnf("control: bad update: %v", err)
			return
		}
		result = s.replace(us)
		if result != nil {
			log.Warnf("control: update refused, nothing changed: %v", result)
		} else {
			for _, t := range s.Tables() {
				log.Infof("New forwarding rules for %s:", t.Name)
				for _, r := range t.Rules {
					log.Infof("    %s", r)
				}
			}
		}
	}
	// pesto closes here; gopasst's client asks for the outcome.
	if b, err = r.ReadByte(); err != nil || b != extMarker {
		return
	}
	s.reply(c, s.request(r, true, result))
}

// request reads and runs an extension request; after is set when it
// follows an update, whose outcome is result.
func (s *Server) request(r io.Reader, after bool, result error) Reply {
	q, err := ReadRequestBody(r)
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return Reply{Version: ExtVersion, Text: "truncated request"}
		}
		return Reply{Version: ExtVersion, Text: err.Error()}
	}
	fail := func(format string, a ...any) Reply {
		return Reply{Version: ExtVersion, Text: fmt.Sprintf(format, a...)}
	}
	ok := func(text string) Reply { return Reply{Version: ExtVersion, OK: true, Text: text} }
	switch {
	case q.Version == 0 || q.Version > ExtVersion:
		return fail("extension version %d not supported (this server speaks 1 to %d)", q.Version, ExtVersion)
	case after && q.Op != OpStatus:
		return fail("only a status request may follow an update")
	case q.Op != OpAdd && q.Op != OpDel && q.Arg != "":
		return fail("%s takes no argument", q.Op)
	}
	switch q.Op {
	case OpStatus:
		switch {
		case !after:
			return fail("no update to report on")
		case result != nil:
			return fail("%v", result)
		}
		return ok("")
	case OpAdd, OpDel:
		f := s.add
		if q.Op == OpDel {
			f = s.del
		}
		text, err := f(q.Arg)
		if err != nil {
			log.Infof("control: %s %s refused: %v", q.Op, q.Arg, err)
			return fail("%v", err)
		}
		log.Infof("control: %s", strings.TrimSpace(text))
		return ok(text)
	case OpFlows:
		return ok(s.flowsText())
	case OpStats:
		return ok(s.statsText())
	}
	return fail("unknown request %d", uint8(q.Op))
}

func (s *Server) reply(c net.Conn, p Reply) {
	b, err := AppendReply(nil, p)
	if err != nil {
		b, _ = AppendReply(nil, Reply{Version: ExtVersion, Text: err.Error()})
	}
	_, _ = c.Write(b)
}

// flowsText lists the flows, one a line, taken under the table's lock,
// which the tap reader and the event loop hold whenever they touch a
// flow.
func (s *Server) flowsText() string {
	t := s.cfg.Flows
	if t == nil {
		return "no flow table\n"
	}
	now := evloop.Now()
	var lines []string
	t.Mu.Lock()
	n, max := t.Len(), t.Cap()
	t.Each(func(i int32, f *flow.Flow) {
		state := ""
		if f.State != flow.StateActive {
			state = " (being set up)"
		}
		lines = append(lines, fmt.Sprintf("%d: %s, idle %.1fs%s", i, f, float64(now-f.LastSeen)/1e9, state))
	})
	t.Mu.Unlock()
	return fmt.Sprintf("%d flows (at most %d)\n", n, max) + strings.Join(append(lines, ""), "\n")
}

// statsText is the counters as SIGUSR1 prints them, and the control
// socket's own.
func (s *Server) statsText() string {
	var b strings.Builder
	if s.cfg.Stats != nil {
		b.WriteString(s.cfg.Stats.String())
		if !strings.HasSuffix(b.String(), "\n") {
			b.WriteString("\n")
		}
	}
	fmt.Fprintf(&b, "control clients served: %d\ncontrol clients refused: %d\n", s.served.Load(), s.refused.Load())
	return b.String()
}
