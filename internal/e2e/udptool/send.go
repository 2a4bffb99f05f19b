package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"
)

// sendResult is the JSON line printed by send.
type sendResult struct {
	Sent     int    `json:"sent"`
	Received int    `json:"received"`
	Bad      int    `json:"bad"`
	Local    string `json:"local"`
	Peer     string `json:"peer"`
	Error    string `json:"error,omitempty"`
}

// sendOpts holds the parsed options of send.
type sendOpts struct {
	to       netip.AddrPort
	from     netip.AddrPort // zero if not set
	size     int
	count    int
	echo     bool
	connect  bool
	wait     time.Duration
	interval time.Duration
	deadline time.Time
}

// flowResult is the outcome of one flow.
type flowResult struct {
	sent, received, bad int
	peer                netip.AddrPort
	err                 error
}

// cmdSend implements "udptool send".
func cmdSend(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("send")
	to := fs.String("to", "", "destination ADDR:PORT")
	from := fs.String("from", "", "source ADDR:PORT to bind")
	size := fs.Int("size", 64, "datagram payload size in bytes")
	count := fs.Int("count", 1, "datagrams per flow")
	echo := fs.Bool("echo", false, "wait for and verify echoes")
	connect := fs.Bool("connect", false, "use connect()+send/recv")
	flows := fs.Int("flows", 1, "concurrent flows, each with its own socket")
	wait := fs.Duration("wait", 2*time.Second, "how long to wait for one echo")
	interval := fs.Duration("interval", 0, "pause between datagrams of a flow")
	timeout := fs.Duration("timeout", 5*time.Second, "bound on the whole run")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	o := sendOpts{size: *size, count: *count, echo: *echo, connect: *connect,
		wait: *wait, interval: *interval}
	var err error
	if o.to, err = parseAddrPort("to", *to); err != nil {
		return err
	}
	if o.to.Port() == 0 {
		return usageError{"-to: port must not be 0"}
	}
	if *from != "" {
		if o.from, err = parseAddrPort("from", *from); err != nil {
			return err
		}
		if o.from.Addr().Is4() != o.to.Addr().Is4() {
			return usageError{"-from and -to must be of the same address family"}
		}
		if o.from.Port() != 0 && int(o.from.Port())+*flows-1 > 65535 {
			return usageError{"-from port + -flows exceeds 65535"}
		}
	}
	if max := maxPayload(o.to.Addr()); o.size < 0 || o.size > max {
		return usageError{fmt.Sprintf("-size must be in 0..%d", max)}
	}
	if o.count < 1 {
		return usageError{"-count must be at least 1"}
	}
	if *flows < 1 {
		return usageError{"-flows must be at least 1"}
	}
	if err := durationFlag("timeout", *timeout); err != nil {
		return err
	}
	if err := durationFlag("wait", *wait); err != nil {
		return err
	}
	if o.interval < 0 {
		return usageError{"-interval must not be negative"}
	}
	o.deadline = time.Now().Add(*timeout)

	// Open all sockets first so that bind errors are reported before any
	// traffic and so that "local" is known.
	conns := make([]*net.UDPConn, *flows)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	for i := range conns {
		if conns[i], err = openFlow(o, i); err != nil {
			return fmt.Errorf("flow %d: %w", i, err)
		}
	}

	results := make([]flowResult, *flows)
	var wg sync.WaitGroup
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = runFlow(conns[i], uint32(i), o)
		}()
	}
	wg.Wait()

	res := sendResult{Local: addrPortOf(conns[0].LocalAddr()).String()}
	var firstErr error
	for _, r := range results {
		res.Sent += r.sent
		res.Received += r.received
		res.Bad += r.bad
		if res.Peer == "" && r.peer.IsValid() {
			res.Peer = r.peer.String()
		}
		if firstErr == nil && r.err != nil {
			firstErr = r.err
		}
	}
	if firstErr != nil {
		res.Error = firstErr.Error()
	}
	if err := printJSON(stdout, res); err != nil {
		return err
	}

	want := o.count * *flows
	switch {
	case res.Sent != want:
		return fmt.Errorf("send: sent %d of %d datagrams (first error: %v)", res.Sent, want, firstErr)
	case res.Bad > 0:
		return fmt.Errorf("send: %d bad replies", res.Bad)
	case o.echo && res.Received != res.Sent:
		return fmt.Errorf("send: received %d of %d echoes", res.Received, res.Sent)
	}
	return nil
}

// openFlow opens the socket of flow i.
func openFlow(o sendOpts, i int) (*net.UDPConn, error) {
	var laddr *net.UDPAddr
	if o.from.IsValid() {
		p := o.from.Port()
		if p != 0 {
			p += uint16(i)
		}
		laddr = net.UDPAddrFromAddrPort(netip.AddrPortFrom(o.from.Addr(), p))
	}
	netw := network(o.to.Addr())
	var c *net.UDPConn
	var err error
	if o.connect {
		c, err = net.DialUDP(netw, laddr, net.UDPAddrFromAddrPort(o.to))
	} else {
		c, err = net.ListenUDP(netw, laddr)
	}
	if err != nil {
		return nil, err
	}
	if err := tuneSocket(c, o.to.Addr().Is4(), false); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// runFlow sends o.count datagrams of flow id on c and, with o.echo, waits
// for and verifies each echo.
func runFlow(c *net.UDPConn, id uint32, o sendOpts) flowResult {
	var r flowResult
	out := make([]byte, o.size)
	in := make([]byte, readBufLen)
	for seq := 0; seq < o.count; seq++ {
		if !time.Now().Before(o.deadline) {
			if r.err == nil {
				r.err = errors.New("timeout")
			}
			return r
		}
		fillPayload(out, id, uint32(seq))
		if err := c.SetWriteDeadline(o.deadline); err != nil {
			r.err = err
			return r
		}
		var err error
		if o.connect {
			_, err = c.Write(out)
		} else {
			_, err = c.WriteToUDPAddrPort(out, o.to)
		}
		if err != nil {
			if r.err == nil {
				r.err = fmt.Errorf("flow %d seq %d: %w", id, seq, err)
			}
			// A refused send on a connected socket reports an earlier
			// ICMP error; keep going. Anything else ends the flow.
			if isRefused(err) || errors.Is(err, syscall.ENOBUFS) {
				continue
			}
			return r
		}
		r.sent++
		if o.echo {
			if fatal := awaitEcho(c, id, uint32(seq), out, in, o, &r); fatal {
				return r
			}
		}
		if o.interval > 0 && seq+1 < o.count {
			time.Sleep(o.interval)
		}
	}
	return r
}

// awaitEcho waits for the echo of datagram seq (content out) and updates r.
// It returns true if the flow cannot continue.
func awaitEcho(c *net.UDPConn, id, seq uint32, out, in []byte, o sendOpts, r *flowResult) (fatal bool) {
	dl := time.Now().Add(o.wait)
	if o.deadline.Before(dl) {
		dl = o.deadline
	}
	if err := c.SetReadDeadline(dl); err != nil {
		r.err = err
		return true
	}
	for {
		n, _, flags, from, err := c.ReadMsgUDPAddrPort(in, nil)
		if err != nil {
			if isTimeout(err) {
				return false // lost; move on to the next datagram
			}
			if r.err == nil {
				r.err = fmt.Errorf("flow %d seq %d: %w", id, seq, err)
			}
			if isRefused(err) {
				return false
			}
			return true
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		if !r.peer.IsValid() {
			r.peer = from
		}
		if from != o.to {
			r.bad++
			if r.err == nil {
				r.err = fmt.Errorf("flow %d seq %d: reply from %s, want %s", id, seq, from, o.to)
			}
			continue
		}
		got := in[:n]
		if flags&syscall.MSG_TRUNC == 0 && n < readBufLen && bytes.Equal(got, out) {
			r.received++
			return false
		}
		// A late echo of an earlier datagram of this flow is not an error.
		if f, s, ok := verifyPayload(got); ok && len(got) == len(out) && f == int64(id) && s >= 0 && s < int64(seq) {
			continue
		}
		r.bad++
		if r.err == nil {
			r.err = fmt.Errorf("flow %d seq %d: echo of %d bytes differs from the %d bytes sent", id, seq, n, len(out))
		}
		return false
	}
}
