// Package yield keeps a goroutine that waits for I/O in blocking system
// calls on good terms with the Go scheduler.
//
// # Theory of operation
//
// gopasst's data-path loops (the tap reader, the qemu stream reader and the
// UDP socket loop) wait in poll(2) or epoll_wait(2) themselves, blocking
// their thread, rather than in the runtime's network poller. At low rates
// every datagram costs a wake-up, and the poller's path is longer: the
// runtime's own epoll_wait wakes a thread, which hands the goroutine to
// a scheduler that may start a second thread spinning for more work, and
// the goroutine then asks the loop's descriptor again. Measured on a
// request/response load (one 64-byte datagram outstanding, 2 cores),
// waiting in the poller cost 6.5 system calls and 2 context switches per
// datagram forwarded, blocking in epoll_wait 3 and 1.3, as the reference
// implementation's single-threaded loop does.
//
// A goroutine that never goes back to the scheduler, though, looks to the
// runtime's monitor thread (sysmon) like one that has run too long: after
// 10 ms it takes the goroutine's P away in its next system call, and then
// checks every 20 µs for a millisecond or more, a timer interrupt each
// time. A loop that calls [Pacer.Tick] once per round gives the scheduler
// a turn (runtime.Gosched, which costs no system call) every few
// milliseconds instead, and the monitor backs off to its slowest rate.
package yield

import (
	"runtime"
	"time"
)

// Every is how often a loop gives the scheduler a turn: well under the
// 10 ms after which the runtime considers a goroutine to run too long.
const Every = 5 * time.Millisecond

// Pacer tells a loop when to give the scheduler a turn. The zero value is
// ready to use; a Pacer belongs to one goroutine.
type Pacer struct {
	last int64
}

// Tick yields if Every has passed since the last yield; now is any
// monotonic clock in nanoseconds.
func (p *Pacer) Tick(now int64) {
	if now-p.last >= int64(Every) {
		p.last = now
		runtime.Gosched()
	}
}

// Now is a monotonic clock in nanoseconds, for callers without one.
func Now() int64 { return int64(time.Since(start)) }

var start = time.Now()
