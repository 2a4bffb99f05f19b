package main

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// goodputConns is the number of connections of the TCP goodput
// scenarios with parallel connections (tcp/PATH/FAMILY/goodput-4conn).
const goodputConns = 4

// runTCPSendN is runTCPSend over o.flows connections to o.to at once:
// it connects them all, then writes the stream pattern on each, from the
// pattern's start, as fast as its socket takes it, each from a goroutine
// of its own, until stopped. Bytes counts what the sockets took, all
// connections together. A failed write (a reset, say) ends the tool with
// an error once it is stopped.
func runTCPSendN(o loadOpts, c *control) (Counters, error) {
	if o.flows < 1 {
		return Counters{}, fmt.Errorf("-flows %d: at least one connection", o.flows)
	}
	fds := make([]int, 0, o.flows)
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	for range o.flows {
		fd, err := tcpDial(o.to, 5*time.Second)
		if err != nil {
			return Counters{}, err
		}
		fds = append(fds, fd)
		if err := setTimeouts(fd, 0, 100*time.Millisecond); err != nil {
			return Counters{}, err
		}
	}
	var st stats
	src := tcpStream()
	errs := make([]error, len(fds))
	var wg sync.WaitGroup
	c.start(st.snapshot)
	for i, fd := range fds {
		wg.Go(func() {
			var pos uint64
			for !c.stopped() {
				off := pos % tcpPeriod
				n, err := unix.Write(fd, src[off:off+tcpChunk])
				if err != nil {
					if again(err) {
						continue
					}
					errs[i] = fmt.Errorf("connection %d: write after %d bytes: %w", i+1, pos, err)
					return
				}
				pos += uint64(n)
				st.bytes.Add(uint64(n))
			}
		})
	}
	wg.Wait()
	return st.snapshot(), errors.Join(errs...)
}
