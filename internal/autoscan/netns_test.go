package autoscan

import (
	"net"
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// TestTablesKeepNamespace checks what wiring relies on: tables opened from a
// thread in another network namespace keep describing that namespace when
// read from other threads. It needs the privilege to create a network
// namespace.
func TestTablesKeepNamespace(t *testing.T) {
	type result struct {
		tb   *Tables
		c    *net.UDPConn
		port uint16
		ino  uint64
		err  error
		skip string
	}
	// work runs on a locked thread that is not the main one: /proc/self/net
	// follows the thread group leader, which must stay in this namespace for
	// the other tests.
	work := func() (r result) {
		runtime.LockOSThread()
		clean := true // thread in its original namespace
		defer func() {
			// A thread left in the new namespace stays locked and
			// ends with its goroutine.
			if clean {
				runtime.UnlockOSThread()
			}
		}()
		if unix.Gettid() == unix.Getpid() {
			r.skip = "running on the main thread"
			return r
		}
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			r.skip = err.Error()
			return r
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			r.skip = "cannot create a network namespace: " + err.Error()
			return r
		}
		clean = false
		defer func() { clean = unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil }()

		if r.tb, r.err = OpenTables("/proc/thread-self/net", true, false); r.err != nil {
			return r
		}
		// The new namespace's lo is down, but binding the wildcard
		// address works anyway.
		if r.c, r.err = net.ListenUDP("udp4", &net.UDPAddr{}); r.err != nil {
			return r
		}
		r.port = uint16(r.c.LocalAddr().(*net.UDPAddr).Port)
		r.ino, r.err = Inode(r.c)
		return r
	}
	ch := make(chan result)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if unix.Gettid() != unix.Getpid() {
			ch <- work()
			return
		}
		// Hold the main thread so that another goroutine runs work
		// on another thread.
		inner := make(chan result)
		go func() { inner <- work() }()
		ch <- <-inner
	}()
	r := <-ch
	if r.skip != "" {
		t.Skip(r.skip)
	}
	if r.tb != nil {
		defer r.tb.Close()
	}
	if r.c != nil {
		defer r.c.Close()
	}
	if r.err != nil {
		t.Fatal(r.err)
	}

	inNS, err := r.tb.Read()
	if err != nil {
		t.Fatal(err)
	}
	if s, ok := findSocket(inNS, r.ino); !ok || s.Port != r.port {
		t.Errorf("socket in the namespace (port %d, inode %d) not found through its tables: %v", r.port, r.ino, inNS)
	}
	outside, err := Read("/proc/self/net")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := findSocket(outside, r.ino); ok {
		t.Errorf("socket in the namespace found in this namespace's tables")
	}
}
