package netns

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// Factory creates sockets inside a namespace, from a thread that stays
// there: a socket belongs to the namespace of the thread that called
// socket(2), and everything after (bind, connect, send) works from any
// thread. It costs one parked thread instead of a thread switch per
// socket, which matters when every new spliced flow needs one.
type Factory struct {
	reqs chan factoryReq
	done chan struct{}
}

type factoryReq struct {
	domain, typ, proto int
	reply              chan factoryReply
}

type factoryReply struct {
	fd  int
	err error
}

// SocketFactory starts a Factory for the namespace. Close it when done.
func (n *NS) SocketFactory() (*Factory, error) {
	f := &Factory{reqs: make(chan factoryReq), done: make(chan struct{})}
	started := make(chan error, 1)
	n.mu.RLock()
	fd := n.fd
	n.mu.RUnlock()
	if fd < 0 {
		return nil, ErrClosed
	}
	// The namespace fd is duplicated so the factory outlives Close of n.
	nsfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	goLocked(func() {
		defer unix.Close(nsfd)
		if err := unix.Setns(nsfd, unix.CLONE_NEWNET); err != nil {
			started <- fmt.Errorf("netns: setns for socket factory: %w", err)
			return
		}
		started <- nil
		for {
			select {
			case r := <-f.reqs:
				fd, err := unix.Socket(r.domain, r.typ, r.proto)
				r.reply <- factoryReply{fd, err}
			case <-f.done:
				return
			}
		}
	})
	if err := <-started; err != nil {
		return nil, err
	}
	return f, nil
}

// goLocked runs body on a new goroutine locked to an OS thread other than
// the main one, and never unlocks it (the thread is discarded when body
// returns; see onLockedThread). A goroutine that lands on the main thread
// keeps it until the worker is running elsewhere, then lets it go
// unchanged.
func goLocked(body func()) {
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			running := make(chan struct{})
			goLocked(func() { close(running); body() })
			<-running
			runtime.UnlockOSThread()
			return
		}
		body()
	}()
}

// Socket is socket(2) inside the namespace.
func (f *Factory) Socket(domain, typ, proto int) (int, error) {
	r := factoryReq{domain: domain, typ: typ, proto: proto, reply: make(chan factoryReply, 1)}
	select {
	case f.reqs <- r:
	case <-f.done:
		return -1, ErrClosed
	}
	rep := <-r.reply
	return rep.fd, rep.err
}

// Close stops the factory.
func (f *Factory) Close() {
	select {
	case <-f.done:
	default:
		close(f.done)
	}
}
