// Package evloop is the host side's one event loop: an epoll instance that
// every protocol registers its sockets with, a wake-up for requests from
// other goroutines, and a once-a-second tick for timers.
//
// # Theory of operation
//
// Each registration carries a [Ref]: the kind of object (a listening socket,
// a flow's socket, ...), the flow index, the side and the flow's generation,
// packed into the 64 bits of epoll data, so an event names its owner
// without a lookup. Kinds are handed out by [Loop.Register] to the
// protocol that owns them, with the [Handler] that gets their events: the
// loop itself knows no protocol. A stale event (for a flow slot reused
// since) is recognised by its handler, which compares the generation with
// the flow's.
//
// The loop blocks its thread in epoll_wait(2) rather than in the Go
// runtime's poller (package yield tells why), waking at least once a second
// to run the tickers, which expire idle flows and run per-connection
// timers, and earlier for a [Timer] armed sooner (TCP's retransmissions,
// whose timeouts are a fraction of a second). Other goroutines run code
// on the loop's thread with [Loop.Do] (opening and closing listening
// sockets at run time), which writes to an eventfd the loop also waits
// on.
package evloop

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopasst/gopasst/internal/yield"
)

// Kind names what a registration is; its Handler is the one given to
// Register.
type Kind uint8

// MaxKinds bounds the kinds a loop hands out (kind 0 is the wake-up).
const MaxKinds = 32

// GenMask is the part of a flow generation that a Ref carries.
const GenMask = 1<<26 - 1

// Ref is what one registration names: an object of a kind, for flow
// objects the flow's index, side and generation.
type Ref struct {
	Kind  Kind
	Side  uint8
	Index int32
	Gen   uint32
}

// encode packs r into epoll data: Index in Fd, the rest in Pad.
func (r Ref) encode(events uint32) unix.EpollEvent {
	return unix.EpollEvent{Events: events, Fd: r.Index,
		Pad: int32(uint32(r.Kind)<<27 | uint32(r.Side&1)<<26 | r.Gen&GenMask)}
}

func decode(ev *unix.EpollEvent) Ref {
	p := uint32(ev.Pad)
	return Ref{Kind: Kind(p >> 27), Side: uint8(p >> 26 & 1), Index: ev.Fd, Gen: p & GenMask}
}

// SameGen reports whether a flow generation matches the one a Ref carries.
func SameGen(flowGen, refGen uint32) bool { return flowGen&GenMask == refGen }

// Handler gets the events of one kind.
type Handler interface {
	// Event handles epoll events ev (EPOLLIN, ...) on the registration
	// named by r.
	Event(r Ref, ev uint32)
}

// HandlerFunc is a Handler that is a function.
type HandlerFunc func(r Ref, ev uint32)

// Event calls f.
func (f HandlerFunc) Event(r Ref, ev uint32) { f(r, ev) }

// Loop is one epoll loop.
type Loop struct {
	epfd, wake int
	handlers   [MaxKinds]Handler
	names      [MaxKinds]string
	nkinds     int
	tickers    []func(now int64)
	timers     []*Timer
	mu         sync.Mutex
	reqs       []func()
	stopping   atomic.Bool
	runDone    chan struct{}
}

// New makes a loop.
func New() (*Loop, error) {
	l := &Loop{runDone: make(chan struct{}), nkinds: 1}
	var err error
	if l.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	if l.wake, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		unix.Close(l.epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	ev := Ref{}.encode(unix.EPOLLIN)
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, l.wake, &ev); err != nil {
		l.release()
		return nil, fmt.Errorf("epoll_ctl: %w", err)
	}
	return l, nil
}

// Register hands out a new kind whose events go to h; name is for logs.
// Called before Run.
func (l *Loop) Register(name string, h Handler) Kind {
	if l.nkinds >= MaxKinds {
		panic("evloop: too many kinds")
	}
	k := Kind(l.nkinds)
	l.nkinds++
	l.handlers[k], l.names[k] = h, name
	return k
}

// Every adds fn to what runs about once a second, with the monotonic time
// in nanoseconds (Now). Called before Run.
func (l *Loop) Every(fn func(now int64)) { l.tickers = append(l.tickers, fn) }

// Timer runs a function on the loop's thread once its deadline passes.
type Timer struct {
	at atomic.Int64 // the deadline, in Now's nanoseconds; 0: none
	fn func(now int64)
}

// NewTimer adds a timer, not armed, that runs fn. Called before Run.
func (l *Loop) NewTimer(fn func(now int64)) *Timer {
	t := &Timer{fn: fn}
	l.timers = append(l.timers, t)
	return t
}

// Arm makes the timer run once Now reaches at, unless it is armed for
// earlier already. Once run, it is no longer armed (its function may
// arm it again). The loop heeds a deadline armed on its own thread
// before it next waits; one armed on another thread when it next wakes,
// at the latest a second later.
func (t *Timer) Arm(at int64) {
	for {
		old := t.at.Load()
		if old != 0 && old <= at || t.at.CompareAndSwap(old, at) {
			return
		}
	}
}

// next is the earliest of end and the armed timers' deadlines.
func (l *Loop) next(end int64) int64 {
	for _, t := range l.timers {
		if at := t.at.Load(); at != 0 && at < end {
			end = at
		}
	}
	return end
}

// fire runs the timers whose deadlines have passed.
func (l *Loop) fire(now int64) {
	for _, t := range l.timers {
		if at := t.at.Load(); at != 0 && at <= now && t.at.CompareAndSwap(at, 0) {
			t.fn(now)
		}
	}
}

// Add registers fd for events with ref.
func (l *Loop) Add(fd int, events uint32, ref Ref) error {
	ev := ref.encode(events)
	return unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev)
}

// Mod changes fd's events and ref.
func (l *Loop) Mod(fd int, events uint32, ref Ref) error {
	ev := ref.encode(events)
	return unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, fd, &ev)
}

// Del removes fd. Closing fd removes it too, unless the socket is
// duplicated.
func (l *Loop) Del(fd int) { _ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, fd, nil) }

// ErrStopped is returned by Do once the loop has stopped.
var ErrStopped = errors.New("event loop stopped")

// Do runs fn on the loop's thread and returns when it has run (a call
// before Run starts waits for it).
func (l *Loop) Do(fn func()) error {
	done := make(chan struct{})
	l.mu.Lock()
	if l.stopping.Load() {
		l.mu.Unlock()
		return ErrStopped
	}
	l.reqs = append(l.reqs, func() { fn(); close(done) })
	l.mu.Unlock()
	l.kick()
	select {
	case <-done:
		return nil
	case <-l.runDone:
		return ErrStopped
	}
}

func (l *Loop) kick() {
	one := [8]byte{1}
	_, _ = unix.Write(l.wake, one[:])
}

// Close stops Run.
func (l *Loop) Close() {
	if !l.stopping.Swap(true) {
		l.kick()
	}
}

// Discard closes the loop's descriptors when Run will not be called (a
// set-up that failed).
func (l *Loop) Discard() { l.release() }

// Done is closed when Run has returned.
func (l *Loop) Done() <-chan struct{} { return l.runDone }

func (l *Loop) release() {
	unix.Close(l.epfd)
	unix.Close(l.wake)
}

// Run waits for events and hands them to their handlers until Close; it
// closes the loop's own descriptors on its way out (the handlers' owners
// close theirs). It runs once.
func (l *Loop) Run() error {
	defer close(l.runDone)
	defer l.release()
	events := make([]unix.EpollEvent, 128)
	var pace yield.Pacer
	last := Now()
	for {
		timeout := max(0, int((l.next(last+int64(time.Second))-Now())/int64(time.Millisecond))+1)
		n, err := unix.EpollWait(l.epfd, events, timeout)
		if errors.Is(err, unix.EINTR) {
			n, err = 0, nil
		}
		if err != nil {
			return fmt.Errorf("epoll_wait: %w", err)
		}
		for i := 0; i < n; i++ {
			r := decode(&events[i])
			if r.Kind == 0 {
				if l.stopping.Load() {
					l.drop()
					return nil
				}
				l.serve()
				continue
			}
			if int(r.Kind) < l.nkinds {
				l.handlers[r.Kind].Event(r, events[i].Events)
			}
		}
		now := Now()
		pace.Tick(now)
		l.fire(now)
		if now-last >= int64(time.Second) {
			for _, fn := range l.tickers {
				fn(now)
			}
			last = now
		}
	}
}

// serve runs the queued requests.
func (l *Loop) serve() {
	var buf [8]byte
	_, _ = unix.Read(l.wake, buf[:])
	l.mu.Lock()
	reqs := l.reqs
	l.reqs = nil
	l.mu.Unlock()
	for _, fn := range reqs {
		fn()
	}
}

// drop discards requests queued when the loop stopped; their callers are
// told by runDone.
func (l *Loop) drop() {
	l.mu.Lock()
	l.reqs = nil
	l.mu.Unlock()
}

// Now is the monotonic clock of the data path, in nanoseconds.
func Now() int64 { return time.Since(epoch).Nanoseconds() }

var epoch = time.Now()
