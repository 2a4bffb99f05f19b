package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime"
	"sort"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// zerocopyMain is "bench zerocopy": it measures what MSG_ZEROCOPY does to
// the sends a translator makes towards the host, large UDP datagrams and
// TCP writes to a socket on the loopback, the only destinations the
// benchmark may use. One sender thread sends to a receiver on
// 127.0.0.1 for a while with plain sends, then with MSG_ZEROCOPY (its
// buffers back in use only once the kernel's completion says so), the
// two interleaved over repetitions; the table gives the median goodput,
// the sender thread's CPU time per GB, and the share of zerocopy
// completions the kernel marks "copied" (it copied the data after all).
func zerocopyMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bench zerocopy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dur := fs.Duration("dur", 2*time.Second, "time of each trial")
	reps := fs.Int("reps", 3, "repetitions")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	kinds := []struct {
		name string
		typ  int
		size int
	}{{"UDP, 65000-byte datagrams", unix.SOCK_DGRAM, 65000}, {"TCP, 256 KiB writes", unix.SOCK_STREAM, tcpChunk}}
	fmt.Fprintf(stdout, "| Send to 127.0.0.1 | plain | MSG_ZEROCOPY | zerocopy/plain | Unit |\n|---|---:|---:|---:|---|\n")
	for _, k := range kinds {
		var res [2][]zcResult
		for rep := range *reps {
			for i := range 2 {
				zc := (i+rep)%2 == 1
				r, err := zcTrial(k.typ, k.size, zc, *dur)
				if err != nil {
					fmt.Fprintf(stderr, "bench zerocopy: %s, zerocopy %v: %v\n", k.name, zc, err)
					return 1
				}
				res[b2i(zc)] = append(res[b2i(zc)], r)
			}
		}
		med := func(zc int, f func(zcResult) float64) float64 {
			v := make([]float64, len(res[zc]))
			for i, r := range res[zc] {
				v[i] = f(r)
			}
			sort.Float64s(v)
			return v[len(v)/2]
		}
		gbit := func(r zcResult) float64 { return float64(r.bytes) * 8 / r.secs / 1e9 }
		cpu := func(r zcResult) float64 { return r.cpu / (float64(r.bytes) / 1e9) * 1e3 }
		copied := func(r zcResult) float64 {
			if r.notes == 0 {
				return 0
			}
			return 100 * float64(r.copied) / float64(r.notes)
		}
		fmt.Fprintf(stdout, "| goodput, %s | %.2f | %.2f | %.2f | Gbit/s ↑ |\n", k.name, med(0, gbit), med(1, gbit), med(1, gbit)/med(0, gbit))
		fmt.Fprintf(stdout, "| sender CPU per GB, %s | %.0f | %.0f | %.2f | ms/GB ↓ |\n", k.name, med(0, cpu), med(1, cpu), med(1, cpu)/med(0, cpu))
		fmt.Fprintf(stdout, "| zerocopy sends the kernel copied, %s | | %.0f | | %% |\n", k.name, med(1, copied))
	}
	return 0
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// zcResult is one trial: bytes the receiver got in secs, the sender
// thread's CPU seconds, and the zerocopy completions (copied of notes).
type zcResult struct {
	bytes         uint64
	secs, cpu     float64
	notes, copied uint64
}

// zcTrial sends size-byte messages of type typ (SOCK_DGRAM or
// SOCK_STREAM) to a receiver on the loopback for dur.
func zcTrial(typ, size int, zc bool, dur time.Duration) (zcResult, error) {
	lfd, err := unix.Socket(unix.AF_INET, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return zcResult{}, err
	}
	defer unix.Close(lfd)
	_ = unix.SetsockoptInt(lfd, unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20)
	if err := unix.Bind(lfd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		return zcResult{}, err
	}
	sa, err := unix.Getsockname(lfd)
	if err != nil {
		return zcResult{}, err
	}
	if typ == unix.SOCK_STREAM {
		if err := unix.Listen(lfd, 1); err != nil {
			return zcResult{}, err
		}
	}
	fd, err := unix.Socket(unix.AF_INET, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return zcResult{}, err
	}
	defer unix.Close(fd)
	if zc {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ZEROCOPY, 1); err != nil {
			return zcResult{}, fmt.Errorf("SO_ZEROCOPY: %w", err)
		}
	}
	if err := unix.Connect(fd, sa); err != nil {
		return zcResult{}, err
	}
	rfd := lfd
	if typ == unix.SOCK_STREAM {
		if rfd, _, err = unix.Accept4(lfd, unix.SOCK_CLOEXEC); err != nil {
			return zcResult{}, err
		}
		defer unix.Close(rfd)
	}
	// The receiver reads until the sender's socket is shut (TCP) or a
	// 1-byte datagram (UDP) ends the trial.
	got := make(chan uint64, 1)
	go func() {
		runtime.LockOSThread()
		buf := make([]byte, 256<<10)
		var n uint64
		for {
			m, err := unix.Read(rfd, buf)
			if err != nil && errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil || m == 0 || typ == unix.SOCK_DGRAM && m == 1 {
				got <- n
				return
			}
			n += uint64(m)
		}
	}()

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	const nbuf = 64
	bufs := make([][]byte, nbuf)
	for i := range bufs {
		bufs[i] = tcpStream()[i*97 : i*97+size]
	}
	var r zcResult
	var sent, done uint32 // zerocopy send ids issued and completed
	var ru0, ru1 unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_THREAD, &ru0)
	start := time.Now()
	end := start.Add(dur)
	flags := 0
	if zc {
		flags = unix.MSG_ZEROCOPY
	}
	for i := 0; time.Now().Before(end); i++ {
		for zc && sent-done >= nbuf {
			if err := zcReap(fd, &done, &r, true); err != nil {
				return r, err
			}
		}
		if err := unix.Sendto(fd, bufs[sent%nbuf], flags, nil); err != nil {
			if errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.EAGAIN) {
				if zc {
					if err := zcReap(fd, &done, &r, true); err != nil {
						return r, err
					}
				}
				continue
			}
			return r, err
		}
		if zc {
			sent++
			if err := zcReap(fd, &done, &r, false); err != nil {
				return r, err
			}
		}
	}
	for zc && done != sent {
		if err := zcReap(fd, &done, &r, true); err != nil {
			return r, err
		}
	}
	_ = unix.Getrusage(unix.RUSAGE_THREAD, &ru1)
	r.secs = time.Since(start).Seconds()
	r.cpu = tvSecs(ru1.Utime) + tvSecs(ru1.Stime) - tvSecs(ru0.Utime) - tvSecs(ru0.Stime)
	if typ == unix.SOCK_STREAM {
		_ = unix.Shutdown(fd, unix.SHUT_WR)
	}
	for range 500 {
		if typ == unix.SOCK_DGRAM {
			_ = unix.Sendto(fd, []byte{0}, 0, nil) // again: a full buffer drops it
		}
		select {
		case r.bytes = <-got:
			return r, nil
		case <-time.After(10 * time.Millisecond):
		}
	}
	return r, errors.New("the receiver did not finish")
}

func tvSecs(tv unix.Timeval) float64 { return float64(tv.Sec) + float64(tv.Usec)/1e6 }

// zcReap reads the zerocopy completions queued on fd's error queue,
// advancing done past the send ids they cover, and counts them in r;
// with wait it first waits for one.
func zcReap(fd int, done *uint32, r *zcResult, wait bool) error {
	if wait {
		pfd := []unix.PollFd{{Fd: int32(fd)}}
		if _, err := unix.Poll(pfd, 1000); err != nil && !errors.Is(err, unix.EINTR) {
			return err
		}
	}
	oob := make([]byte, 128)
	for {
		_, oobn, _, _, err := unix.Recvmsg(fd, nil, oob, unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("error queue: %w", err)
		}
		cms, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return err
		}
		for _, cm := range cms {
			if cm.Header.Level != unix.SOL_IP || cm.Header.Type != unix.IP_RECVERR || len(cm.Data) < int(unsafe.Sizeof(unix.SockExtendedErr{})) {
				continue
			}
			ee := (*unix.SockExtendedErr)(unsafe.Pointer(&cm.Data[0]))
			if ee.Origin != unix.SO_EE_ORIGIN_ZEROCOPY {
				continue
			}
			// [Info, Data] are the ids completed; they come in order.
			*done = ee.Data + 1
			r.notes += uint64(ee.Data - ee.Info + 1)
			if ee.Code&unix.SO_EE_CODE_ZEROCOPY_COPIED != 0 {
				r.copied += uint64(ee.Data - ee.Info + 1)
			}
		}
	}
}
