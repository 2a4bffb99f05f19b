// Command tcptool is a small TCP test program used by the end-to-end tests
// of gopasst (internal/e2e/tcp_test.go). It is a test tool, not part of
// the data path: it uses the net package.
//
// Every byte it sends is deterministic: byte i of the stream with seed S
// is byte i%8 of splitmix64(S, i/8) (see package pattern), so a receiver
// verifies what arrives byte-exact, in order, without anything else
// travelling out of band. Receivers also print the SHA-256 of what they
// received and senders of what they sent, so a test can compare the two.
//
// Output is one JSON object per line on stdout (plus "listen ADDR:PORT"
// and "ready" lines from servers once they listen); errors go to stderr
// as one "tcptool: ..." line. Run "tcptool help" for the subcommands.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gopasst/gopasst/internal/e2e/pattern"
)

const usageText = `usage: tcptool <command> [flags]

Addresses are numeric ADDR:PORT literals ("127.0.0.1:7000", "[::]:7000");
an IPv6 literal selects an IPv6-only socket. Data is the deterministic
pattern of a seed (-seed, what this end sends; -peer-seed, what it
expects to receive).

commands:
  serve -l ADDR:PORT [-mode echo|sink|source] [-count N] [-size BYTES]
        [-seed S] [-peer-seed S] [-sleep-per-read MIN[,MAX]]
        [-read-size B] [-rcvbuf B] [-reply-delay D] [-timeout D] [-quiet]
        Listen, print "listen ADDR:PORT" and "ready", serve connections
        (each concurrently), verifying what they receive:
          echo    send back what arrives; half-close when the peer does
          sink    read to EOF, then (after -reply-delay) send -size bytes
                  and close: the reply of a half-closed connection
          source  send -size bytes and half-close, reading (and
                  verifying) whatever the peer sends until its EOF
        Prints one JSON line per connection (unless -quiet) and, once
        -count connections are done (or at -timeout / SIGTERM), a
        {"summary":true,...} line. Exit 1 if a connection failed or fewer
        than -count came.

  client -to ADDR:PORT [-from ADDR:PORT] [-send BYTES] [-expect BYTES]
         [-seed S] [-peer-seed S] [-sleep-per-read MIN[,MAX]]
         [-read-size B] [-rcvbuf B] [-timeout D] [-connect-timeout D]
        Connect, send -send bytes and half-close (CloseWrite), reading
        at the same time until EOF; verify what arrives byte-exact
        against -peer-seed (default: -seed, for an echo server) and that
        it is -expect bytes (-1: any). Prints one JSON line; exit 1 if
        anything failed.

  many -to ADDR:PORT [-concurrent N] [-sequential M] [-size B]
       [-hold FILE] [-timeout D] [-connect-timeout D]
        Short echo-checked connections to an echo server: first N open at
        once (each sends B bytes and reads them back, then all stay open:
        prints "holding K", waits for FILE if given, then closes them),
        then M one after another. One JSON line per phase; exit 1 on any
        failure.

  reset (-l ADDR:PORT | -to ADDR:PORT) -role resetter|victim [-after B]
        [-timeout D]
        RST test, one connection. The victim sends without end and reads
        at the same time until both fail; the resetter reads -after
        bytes, then closes with SO_LINGER 0 (RST). Both print
        unix-nanosecond timestamps (reset_ns; error_ns, the victim's
        first error) and the victim the errnos of its first and second
        error ("ECONNRESET,EOF"). Exit 1 if neither is ECONNRESET: the
        kernel reports a reset once, to the first call after it.

  connect -to ADDR:PORT [-timeout D]
        Attempt one connection; print {"result":"connected|refused|
        timeout|reset|error",...} with the time it took. Exit 0.
`

// usageError marks errors caused by a bad command line.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// errFailed is returned by a command that printed its result and failed.
var errFailed = errors.New("failed")

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes the command line args and returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageText)
		return 2
	}
	out := &printer{w: stdout}
	var err error
	switch args[0] {
	case "serve":
		err = cmdServe(args[1:], out)
	case "client":
		err = cmdClient(args[1:], out)
	case "many":
		err = cmdMany(args[1:], out)
	case "reset":
		err = cmdReset(args[1:], out)
	case "connect":
		err = cmdConnect(args[1:], out)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usageText)
		return 0
	default:
		err = usageError{fmt.Sprintf("unknown command %q", args[0])}
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(stdout, usageText)
		return 0
	case errors.Is(err, errFailed):
		return 1
	}
	fmt.Fprintf(stderr, "tcptool: %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
	var ue usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

// printer writes whole lines to stdout from several goroutines.
type printer struct {
	mu sync.Mutex
	w  io.Writer
}

// json prints v as one JSON line.
func (p *printer) json(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	p.line(string(b))
}

// line prints s and a newline in one write.
func (p *printer) line(s string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	io.WriteString(p.w, s+"\n")
}

// newFlagSet returns a flag set that reports errors instead of exiting.
func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("tcptool "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// parseFlags parses args into fs and rejects positional arguments.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err.Error()}
	}
	if fs.NArg() != 0 {
		return usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	return nil
}

// parseAddrPort parses a numeric ADDR:PORT; name is the flag's, for errors.
func parseAddrPort(name, s string) (netip.AddrPort, error) {
	if s == "" {
		return netip.AddrPort{}, usageError{fmt.Sprintf("-%s is required", name)}
	}
	a, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, usageError{fmt.Sprintf("-%s: %v", name, err)}
	}
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()), nil
}

// network is "tcp4" or "tcp6" (IPv6-only) for a.
func network(a netip.Addr) string {
	if a.Is4() {
		return "tcp4"
	}
	return "tcp6"
}

// sleepRange is a -sleep-per-read value: MIN or MIN,MAX.
type sleepRange struct{ lo, hi time.Duration }

func (s *sleepRange) String() string {
	if s.hi == s.lo {
		return s.lo.String()
	}
	return s.lo.String() + "," + s.hi.String()
}

func (s *sleepRange) Set(v string) error {
	lo, hi, two := strings.Cut(v, ",")
	var err error
	if s.lo, err = time.ParseDuration(lo); err != nil {
		return err
	}
	s.hi = s.lo
	if two {
		if s.hi, err = time.ParseDuration(hi); err != nil {
			return err
		}
	}
	if s.lo < 0 || s.hi < s.lo {
		return fmt.Errorf("bad range %q", v)
	}
	return nil
}

// pause sleeps for a pseudo-random time in the range (nothing if zero).
func (s *sleepRange) pause(rng *rand.Rand) {
	if s.hi <= 0 {
		return
	}
	d := s.lo
	if s.hi > s.lo {
		d += time.Duration(rng.Int64N(int64(s.hi-s.lo) + 1))
	}
	time.Sleep(d)
}

// verifier checks a received stream against the pattern of a seed and
// hashes it.
type verifier struct {
	seed  uint64
	n     int64 // bytes received
	badAt int64 // offset of the first wrong byte, -1 if none
	h     hash.Hash
	want  []byte
	first time.Time // when the first byte came
}

func newVerifier(seed uint64) *verifier {
	return &verifier{seed: seed, badAt: -1, h: sha256.New()}
}

// add verifies and hashes the next bytes of the stream.
func (v *verifier) add(p []byte) {
	if len(p) == 0 {
		return
	}
	if v.n == 0 {
		v.first = time.Now()
	}
	v.h.Write(p)
	if v.badAt < 0 {
		if cap(v.want) < len(p) {
			v.want = make([]byte, len(p))
		}
		w := v.want[:len(p)]
		pattern.Fill(w, v.seed, uint64(v.n))
		if !bytes.Equal(p, w) {
			for i := range p {
				if p[i] != w[i] {
					v.badAt = v.n + int64(i)
					break
				}
			}
		}
	}
	v.n += int64(len(p))
}

func (v *verifier) sum() string { return hex.EncodeToString(v.h.Sum(nil)) }

// readAll reads c to EOF into v, pausing between reads as sleep says.
// EOF is not an error.
func readAll(c net.Conn, v *verifier, size int, sleep *sleepRange) error {
	buf := make([]byte, size)
	rng := rand.New(rand.NewPCG(uint64(size), v.seed))
	for {
		n, err := c.Read(buf)
		v.add(buf[:n])
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		sleep.pause(rng)
	}
}

// writeChunk is the size of the writes of the pattern.
const writeChunk = 256 << 10

// writePattern sends n bytes (n < 0: without end) of the pattern of seed,
// hashing them into h, and returns how many were written. If count is not
// nil it is kept up to date.
func writePattern(c net.Conn, seed uint64, n int64, h hash.Hash, count *atomic.Int64) (int64, error) {
	buf := make([]byte, writeChunk)
	var off int64
	for n < 0 || off < n {
		k := int64(len(buf))
		if n >= 0 {
			k = min(k, n-off)
		}
		pattern.Fill(buf[:k], seed, uint64(off))
		m, err := c.Write(buf[:k])
		if h != nil {
			h.Write(buf[:m])
		}
		off += int64(m)
		if count != nil {
			count.Store(off)
		}
		if err != nil {
			return off, err
		}
	}
	return off, nil
}

// closeWrite half-closes c.
func closeWrite(c net.Conn) error {
	if tc, ok := c.(*net.TCPConn); ok {
		return tc.CloseWrite()
	}
	return errors.New("not a TCP connection")
}

// errnoName names the error class of err for the JSON results.
func errnoName(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, io.EOF):
		return "EOF"
	case errors.Is(err, syscall.ECONNRESET):
		return "ECONNRESET"
	case errors.Is(err, syscall.EPIPE):
		return "EPIPE"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "ECONNREFUSED"
	case errors.Is(err, syscall.ENOTCONN):
		return "ENOTCONN"
	case errors.Is(err, syscall.ETIMEDOUT):
		return "ETIMEDOUT"
	case errors.Is(err, syscall.EHOSTUNREACH):
		return "EHOSTUNREACH"
	case errors.Is(err, syscall.ENETUNREACH):
		return "ENETUNREACH"
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	return "other"
}

// errString is err's text, "" for nil.
func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// ms is d in milliseconds.
func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// addrOf converts a socket address to its ADDR:PORT text, IPv4-mapped
// addresses unmapped.
func addrOf(a net.Addr) string {
	ta, ok := a.(*net.TCPAddr)
	if !ok || ta == nil {
		return ""
	}
	p := ta.AddrPort()
	return netip.AddrPortFrom(p.Addr().Unmap(), p.Port()).String()
}

// rcvbufControl returns a socket control function that sets SO_RCVBUF to
// n before the socket listens or connects, so that the window the
// handshake announces already reflects it; nil if n is 0.
func rcvbufControl(n int) func(network, address string, c syscall.RawConn) error {
	if n == 0 {
		return nil
	}
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, n)
		}); err != nil {
			return err
		}
		return serr
	}
}

// listen opens the listener of -l (accepted sockets inherit a receive
// buffer of rcvbuf bytes unless it is 0) and prints the ready lines.
func listen(out *printer, s string, rcvbuf int) (*net.TCPListener, error) {
	laddr, err := parseAddrPort("l", s)
	if err != nil {
		return nil, err
	}
	lc := net.ListenConfig{Control: rcvbufControl(rcvbuf)}
	l, err := lc.Listen(context.Background(), network(laddr.Addr()), laddr.String())
	if err != nil {
		return nil, err
	}
	ln := l.(*net.TCPListener)
	out.line("listen " + addrOf(ln.Addr()))
	out.line("ready")
	return ln, nil
}

// dial connects to to, from from if valid, with a receive buffer of
// rcvbuf bytes unless it is 0.
func dial(to, from netip.AddrPort, timeout time.Duration, rcvbuf int) (*net.TCPConn, error) {
	d := net.Dialer{Timeout: timeout, Control: rcvbufControl(rcvbuf)}
	if from.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(from)
	}
	c, err := d.Dial(network(to.Addr()), to.String())
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// serveResult is what serve prints per connection.
type serveResult struct {
	Conn           int     `json:"conn"`
	Mode           string  `json:"mode"`
	Local          string  `json:"local"`
	Peer           string  `json:"peer"`
	Received       int64   `json:"received"`
	Sent           int64   `json:"sent"`
	OK             bool    `json:"ok"`
	BadAt          int64   `json:"bad_at"`
	SHA256Received string  `json:"sha256_received"`
	SHA256Sent     string  `json:"sha256_sent"`
	EOFMs          float64 `json:"eof_ms"`
	Ms             float64 `json:"ms"`
	Err            string  `json:"err"`
}

// serveSummary is the last line of serve.
type serveSummary struct {
	Summary  bool     `json:"summary"`
	Conns    int      `json:"conns"`
	OK       int      `json:"ok"`
	Failed   int      `json:"failed"`
	Received int64    `json:"received"`
	FirstErr string   `json:"first_err"`
	Peers    []string `json:"peers"` // distinct peer addresses (no ports), at most 16
}

// serveOpts are the flags of serve that shape a connection.
type serveOpts struct {
	mode           string
	size           int64
	seed, peerSeed uint64
	sleep          sleepRange
	readSize       int
	replyDelay     time.Duration
	deadline       time.Time
}

// cmdServe implements "tcptool serve".
func cmdServe(args []string, out *printer) error {
	fs := newFlagSet("serve")
	l := fs.String("l", "", "listen address")
	count := fs.Int("count", 0, "connections to serve (0: until -timeout or SIGTERM)")
	timeout := fs.Duration("timeout", 60*time.Second, "bound on the whole run")
	quiet := fs.Bool("quiet", false, "print only the summary")
	rcvbuf := fs.Int("rcvbuf", 0, "SO_RCVBUF of accepted sockets (0: the kernel's)")
	var o serveOpts
	fs.StringVar(&o.mode, "mode", "echo", "echo, sink or source")
	fs.Int64Var(&o.size, "size", 0, "bytes to send (source) or to reply after EOF (sink)")
	fs.Uint64Var(&o.seed, "seed", 2, "seed of what this end sends")
	fs.Uint64Var(&o.peerSeed, "peer-seed", 1, "seed of what the peer sends")
	fs.Var(&o.sleep, "sleep-per-read", "pause between reads: MIN or MIN,MAX")
	fs.IntVar(&o.readSize, "read-size", 64<<10, "bytes per read")
	fs.DurationVar(&o.replyDelay, "reply-delay", 0, "sink: pause between the peer's EOF and the reply")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	switch o.mode {
	case "echo", "sink", "source":
	default:
		return usageError{fmt.Sprintf("unknown -mode %q", o.mode)}
	}
	if o.readSize <= 0 || o.size < 0 || *count < 0 {
		return usageError{"-read-size, -size and -count must not be negative"}
	}
	ln, err := listen(out, *l, *rcvbuf)
	if err != nil {
		return err
	}
	o.deadline = time.Now().Add(*timeout)

	var (
		mu    sync.Mutex
		sum   = serveSummary{Summary: true, Peers: []string{}}
		seen  = map[string]bool{}
		wg    sync.WaitGroup
		stop  atomic.Bool
		timer = time.AfterFunc(*timeout, func() { stop.Store(true); ln.Close() })
	)
	defer timer.Stop()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	go func() {
		if _, ok := <-sigs; ok {
			stop.Store(true)
			ln.Close()
		}
	}()
	for i := 0; *count == 0 || i < *count; i++ {
		c, err := ln.Accept()
		if err != nil {
			if !stop.Load() {
				sum.FirstErr = "accept: " + err.Error()
			}
			break
		}
		mu.Lock()
		sum.Conns++
		if pa, err := netip.ParseAddrPort(addrOf(c.RemoteAddr())); err == nil && !seen[pa.Addr().String()] && len(sum.Peers) < 16 {
			seen[pa.Addr().String()] = true
			sum.Peers = append(sum.Peers, pa.Addr().String())
		}
		mu.Unlock()
		wg.Add(1)
		go func(i int, c *net.TCPConn) {
			defer wg.Done()
			r := serveConn(i, c, &o)
			mu.Lock()
			if r.OK {
				sum.OK++
			} else {
				sum.Failed++
				if sum.FirstErr == "" {
					sum.FirstErr = fmt.Sprintf("conn %d from %s: %s (bad_at %d)", i, r.Peer, r.Err, r.BadAt)
				}
			}
			sum.Received += r.Received
			mu.Unlock()
			if !*quiet {
				out.json(r)
			}
		}(i, c.(*net.TCPConn))
	}
	ln.Close()
	wg.Wait()
	out.json(sum)
	if sum.Failed > 0 || (*count > 0 && sum.Conns < *count) {
		return errFailed
	}
	return nil
}

// serveConn serves one connection and returns its result.
func serveConn(i int, c *net.TCPConn, o *serveOpts) serveResult {
	defer c.Close()
	start := time.Now()
	r := serveResult{Conn: i, Mode: o.mode, Local: addrOf(c.LocalAddr()), Peer: addrOf(c.RemoteAddr()), BadAt: -1}
	c.SetDeadline(o.deadline)
	v := newVerifier(o.peerSeed)
	sent := sha256.New()
	var err error
	switch o.mode {
	case "echo":
		buf := make([]byte, o.readSize)
		rng := rand.New(rand.NewPCG(3, 4))
		for {
			n, rerr := c.Read(buf)
			v.add(buf[:n])
			if n > 0 {
				m, werr := c.Write(buf[:n])
				sent.Write(buf[:m])
				r.Sent += int64(m)
				if werr != nil {
					err = werr
					break
				}
			}
			if rerr == io.EOF {
				r.EOFMs = ms(time.Since(start))
				err = closeWrite(c)
				break
			}
			if rerr != nil {
				err = rerr
				break
			}
			o.sleep.pause(rng)
		}
	case "sink":
		if err = readAll(c, v, o.readSize, &o.sleep); err == nil {
			r.EOFMs = ms(time.Since(start))
			time.Sleep(o.replyDelay)
			if r.Sent, err = writePattern(c, o.seed, o.size, sent, nil); err == nil {
				err = closeWrite(c)
			}
		}
	case "source":
		done := make(chan error, 1)
		go func() {
			n, err := writePattern(c, o.seed, o.size, sent, nil)
			r.Sent = n
			if err == nil {
				err = closeWrite(c)
			}
			done <- err
		}()
		rerr := readAll(c, v, o.readSize, &o.sleep)
		r.EOFMs = ms(time.Since(start))
		err = errors.Join(<-done, rerr)
	}
	r.Received, r.SHA256Received, r.SHA256Sent = v.n, v.sum(), hex.EncodeToString(sent.Sum(nil))
	r.Err = errString(err)
	r.OK = err == nil && v.badAt < 0
	r.BadAt = v.badAt
	r.Ms = ms(time.Since(start))
	return r
}

// clientResult is what client prints.
type clientResult struct {
	Local          string  `json:"local"`
	Peer           string  `json:"peer"`
	Sent           int64   `json:"sent"`
	Received       int64   `json:"received"`
	OK             bool    `json:"ok"`
	BadAt          int64   `json:"bad_at"`
	SHA256Sent     string  `json:"sha256_sent"`
	SHA256Received string  `json:"sha256_received"`
	ConnectMs      float64 `json:"connect_ms"`
	ShutMs         float64 `json:"shut_ms"`       // when CloseWrite was done, from connected
	FirstByteMs    float64 `json:"first_byte_ms"` // when the first byte came, from connected (-1: none)
	EOFMs          float64 `json:"eof_ms"`        // when EOF came, from connected
	Ms             float64 `json:"ms"`            // the whole exchange, from connected
	Err            string  `json:"err"`
	Errno          string  `json:"errno"`
}

// cmdClient implements "tcptool client".
func cmdClient(args []string, out *printer) error {
	fs := newFlagSet("client")
	to := fs.String("to", "", "server address")
	from := fs.String("from", "", "local address to bind")
	send := fs.Int64("send", 0, "bytes to send before half-closing")
	expect := fs.Int64("expect", -1, "bytes expected back (-1: any)")
	seed := fs.Uint64("seed", 1, "seed of what this end sends")
	peerSeed := fs.Uint64("peer-seed", 0, "seed of what the server sends (0: -seed, an echo)")
	var sleep sleepRange
	fs.Var(&sleep, "sleep-per-read", "pause between reads: MIN or MIN,MAX")
	readSize := fs.Int("read-size", 64<<10, "bytes per read")
	timeout := fs.Duration("timeout", 60*time.Second, "bound on the exchange")
	connTimeout := fs.Duration("connect-timeout", 5*time.Second, "bound on connect")
	rcvbuf := fs.Int("rcvbuf", 0, "SO_RCVBUF (0: the kernel's)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	dst, err := parseAddrPort("to", *to)
	if err != nil {
		return err
	}
	var src netip.AddrPort
	if *from != "" {
		if src, err = parseAddrPort("from", *from); err != nil {
			return err
		}
	}
	if *peerSeed == 0 {
		*peerSeed = *seed
	}
	if *readSize <= 0 || *send < 0 {
		return usageError{"-read-size and -send must not be negative"}
	}
	r := clientResult{BadAt: -1, FirstByteMs: -1}
	t0 := time.Now()
	c, err := dial(dst, src, *connTimeout, *rcvbuf)
	r.ConnectMs = ms(time.Since(t0))
	if err != nil {
		r.Err, r.Errno = err.Error(), errnoName(err)
		out.json(r)
		return errFailed
	}
	defer c.Close()
	r.Local, r.Peer = addrOf(c.LocalAddr()), addrOf(c.RemoteAddr())
	start := time.Now()
	c.SetDeadline(start.Add(*timeout))
	sent := sha256.New()
	done := make(chan error, 1)
	go func() {
		n, err := writePattern(c, *seed, *send, sent, nil)
		r.Sent = n
		if err == nil {
			err = closeWrite(c)
			r.ShutMs = ms(time.Since(start))
		}
		done <- err
	}()
	v := newVerifier(*peerSeed)
	rerr := readAll(c, v, *readSize, &sleep)
	if rerr == nil {
		r.EOFMs = ms(time.Since(start))
	}
	werr := <-done
	r.Ms = ms(time.Since(start))
	if !v.first.IsZero() {
		r.FirstByteMs = ms(v.first.Sub(start))
	}
	err = errors.Join(werr, rerr)
	r.Received, r.BadAt, r.SHA256Sent, r.SHA256Received = v.n, v.badAt, hex.EncodeToString(sent.Sum(nil)), v.sum()
	r.Err = errString(err)
	// A reset often shows on both sides, the write side's as ENOTCONN
	// from the shutdown; name the reset.
	switch we, re := errnoName(werr), errnoName(rerr); {
	case we == "ECONNRESET" || re == "ECONNRESET":
		r.Errno = "ECONNRESET"
	case we != "":
		r.Errno = we
	default:
		r.Errno = re
	}
	if err == nil && v.badAt < 0 && *expect >= 0 && v.n != *expect {
		r.Err = fmt.Sprintf("received %d bytes, expected %d", v.n, *expect)
	}
	r.OK = r.Err == "" && v.badAt < 0
	out.json(r)
	if !r.OK {
		return errFailed
	}
	return nil
}

// manyResult is what many prints per phase.
type manyResult struct {
	Phase    string  `json:"phase"`
	Conns    int     `json:"conns"`
	OK       int     `json:"ok"`
	Failed   int     `json:"failed"`
	FirstErr string  `json:"first_err"`
	Ms       float64 `json:"ms"`
}

// maxManyFailures stops the sequential phase early: every further
// failure would likely cost a connect timeout.
const maxManyFailures = 20

// cmdMany implements "tcptool many".
func cmdMany(args []string, out *printer) error {
	fs := newFlagSet("many")
	to := fs.String("to", "", "echo server address")
	conc := fs.Int("concurrent", 0, "connections open at once")
	seq := fs.Int("sequential", 0, "connections one after another")
	size := fs.Int("size", 64, "bytes per connection")
	hold := fs.String("hold", "", "file whose creation ends the concurrent phase's hold")
	timeout := fs.Duration("timeout", 120*time.Second, "bound on each phase")
	connTimeout := fs.Duration("connect-timeout", 10*time.Second, "bound on each connect")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	dst, err := parseAddrPort("to", *to)
	if err != nil {
		return err
	}
	if *conc < 0 || *seq < 0 || *size <= 0 {
		return usageError{"-concurrent and -sequential must not be negative, -size must be positive"}
	}
	data := make([]byte, *size)
	pattern.Fill(data, 1, 0)
	ok := true
	record := func(r *manyResult, mu *sync.Mutex, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err == nil {
			r.OK++
			return
		}
		r.Failed++
		if r.FirstErr == "" {
			r.FirstErr = err.Error()
		}
	}
	if *conc > 0 {
		start := time.Now()
		deadline := start.Add(*timeout)
		r := manyResult{Phase: "concurrent", Conns: *conc}
		var mu sync.Mutex
		var wg sync.WaitGroup
		conns := make([]*net.TCPConn, *conc)
		for i := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := dial(dst, netip.AddrPort{}, *connTimeout, 0)
				if err == nil {
					c.SetDeadline(deadline)
					if err = exchange(c, data); err != nil {
						c.Close()
					} else {
						conns[i] = c
					}
				}
				record(&r, &mu, err)
			}()
		}
		wg.Wait()
		r.Ms = ms(time.Since(start))
		out.json(r)
		out.line(fmt.Sprintf("holding %d", r.OK))
		if *hold != "" {
			for {
				if _, err := os.Stat(*hold); err == nil || time.Now().After(deadline) {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		start = time.Now()
		cr := manyResult{Phase: "concurrent-close", Conns: r.OK}
		for _, c := range conns {
			if c == nil {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				err := closeWrite(c)
				if err == nil {
					var n int
					n, err = c.Read(make([]byte, 1))
					if err == io.EOF && n == 0 {
						err = nil
					} else if err == nil {
						err = errors.New("data after the echo")
					}
				}
				record(&cr, &mu, err)
			}()
		}
		wg.Wait()
		cr.Ms = ms(time.Since(start))
		out.json(cr)
		ok = ok && r.Failed == 0 && cr.Failed == 0
	}
	if *seq > 0 {
		start := time.Now()
		deadline := start.Add(*timeout)
		r := manyResult{Phase: "sequential", Conns: *seq}
		var mu sync.Mutex
		for i := 0; i < *seq && r.Failed < maxManyFailures && time.Now().Before(deadline); i++ {
			c, err := dial(dst, netip.AddrPort{}, *connTimeout, 0)
			if err == nil {
				c.SetDeadline(deadline)
				if err = exchange(c, data); err == nil {
					if err = closeWrite(c); err == nil {
						var n int
						if n, err = c.Read(make([]byte, 1)); err == io.EOF && n == 0 {
							err = nil
						} else if err == nil {
							err = errors.New("data after the echo")
						}
					}
				}
				c.Close()
			}
			if err != nil {
				err = fmt.Errorf("connection %d: %w", i, err)
			}
			record(&r, &mu, err)
		}
		r.Ms = ms(time.Since(start))
		out.json(r)
		ok = ok && r.OK == *seq
	}
	if !ok {
		return errFailed
	}
	return nil
}

// exchange sends data on c and reads its echo, checking it byte-exact.
func exchange(c *net.TCPConn, data []byte) error {
	if _, err := c.Write(data); err != nil {
		return err
	}
	got := make([]byte, len(data))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if !bytes.Equal(got, data) {
		return errors.New("echo differs from what was sent")
	}
	return nil
}

// resetResult is what reset prints.
type resetResult struct {
	Role     string `json:"role"`
	Local    string `json:"local"`
	Peer     string `json:"peer"`
	Sent     int64  `json:"sent"`
	Received int64  `json:"received"`
	ResetNs  int64  `json:"reset_ns,omitempty"`
	ErrorNs  int64  `json:"error_ns,omitempty"`
	Err      string `json:"err"`
	Errno    string `json:"errno"`
}

// cmdReset implements "tcptool reset".
func cmdReset(args []string, out *printer) error {
	fs := newFlagSet("reset")
	l := fs.String("l", "", "listen address (server)")
	to := fs.String("to", "", "server address (client)")
	role := fs.String("role", "", "resetter or victim")
	after := fs.Int64("after", 1<<20, "resetter: bytes to read before the RST")
	timeout := fs.Duration("timeout", 20*time.Second, "bound on the run")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *role != "resetter" && *role != "victim" {
		return usageError{"-role must be resetter or victim"}
	}
	if (*l == "") == (*to == "") {
		return usageError{"exactly one of -l and -to is required"}
	}
	deadline := time.Now().Add(*timeout)
	var c *net.TCPConn
	if *l != "" {
		ln, err := listen(out, *l, 0)
		if err != nil {
			return err
		}
		ln.SetDeadline(deadline)
		c, err = ln.AcceptTCP()
		ln.Close()
		if err != nil {
			return err
		}
	} else {
		dst, err := parseAddrPort("to", *to)
		if err != nil {
			return err
		}
		if c, err = dial(dst, netip.AddrPort{}, 5*time.Second, 0); err != nil {
			return err
		}
	}
	defer c.Close()
	c.SetDeadline(deadline)
	r := resetResult{Role: *role, Local: addrOf(c.LocalAddr()), Peer: addrOf(c.RemoteAddr())}
	if *role == "resetter" {
		buf := make([]byte, 64<<10)
		var err error
		for r.Received < *after && err == nil {
			var n int
			n, err = c.Read(buf[:min(int64(len(buf)), *after-r.Received)])
			r.Received += int64(n)
		}
		if err != nil {
			r.Err, r.Errno = err.Error(), errnoName(err)
			out.json(r)
			return errFailed
		}
		if err := c.SetLinger(0); err != nil {
			return err
		}
		r.ResetNs = time.Now().UnixNano()
		c.Close()
		out.json(r)
		return nil
	}
	// The victim: send and receive until both directions fail. The
	// kernel reports a reset (ECONNRESET) once, to whichever of the two
	// calls comes first; the other then sees EOF or EPIPE. So the reset
	// was seen if either saw it, at the time of the first error.
	type event struct {
		err error
		at  time.Time
	}
	events := make(chan event, 2)
	var sent, received atomic.Int64
	go func() {
		_, err := writePattern(c, 1, -1, nil, &sent)
		events <- event{err, time.Now()}
	}()
	go func() {
		buf := make([]byte, 64<<10)
		for {
			k, err := c.Read(buf)
			received.Add(int64(k))
			if err != nil {
				events <- event{err, time.Now()}
				return
			}
		}
	}()
	first := <-events
	// The other direction fails at once after a reset; after a graceful
	// close it may not, hence the bound.
	c.SetDeadline(time.Now().Add(2 * time.Second))
	second := <-events
	r.ErrorNs = first.at.UnixNano()
	r.Sent, r.Received = sent.Load(), received.Load()
	r.Err = first.err.Error() + "; then " + second.err.Error()
	r.Errno = errnoName(first.err) + "," + errnoName(second.err)
	out.json(r)
	if !errors.Is(first.err, syscall.ECONNRESET) && !errors.Is(second.err, syscall.ECONNRESET) {
		return errFailed
	}
	return nil
}

// connectResult is what connect prints.
type connectResult struct {
	Result string  `json:"result"`
	Local  string  `json:"local"`
	Err    string  `json:"err"`
	Errno  string  `json:"errno"`
	Ms     float64 `json:"ms"`
}

// cmdConnect implements "tcptool connect".
func cmdConnect(args []string, out *printer) error {
	fs := newFlagSet("connect")
	to := fs.String("to", "", "address to connect to")
	timeout := fs.Duration("timeout", 2*time.Second, "bound on connect")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	dst, err := parseAddrPort("to", *to)
	if err != nil {
		return err
	}
	start := time.Now()
	c, err := dial(dst, netip.AddrPort{}, *timeout, 0)
	r := connectResult{Ms: ms(time.Since(start)), Err: errString(err), Errno: errnoName(err)}
	switch r.Errno {
	case "":
		r.Result = "connected"
		r.Local = addrOf(c.LocalAddr())
		c.Close()
	case "ECONNREFUSED":
		r.Result = "refused"
	case "timeout", "ETIMEDOUT":
		r.Result = "timeout"
	case "ECONNRESET":
		r.Result = "reset"
	default:
		r.Result = "error"
	}
	out.json(r)
	return nil
}
