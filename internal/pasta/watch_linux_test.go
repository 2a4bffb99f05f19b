package pasta

import (
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopasst/gopasst/internal/conf"
)

// watchLimit is how soon the watch must tell: far less than the second
// of the periodic look-up, with room for a loaded machine.
const watchLimit = 200 * time.Millisecond

// waitEvent waits for w to report that the namespace is gone and returns
// how long it took since start.
func waitEvent(t *testing.T, w *targetWatch, start time.Time) time.Duration {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case exited := <-w.events:
			if exited || w.gone() {
				return time.Since(start)
			}
		case <-timeout:
			t.Fatal("no event within 5 s")
		}
	}
}

func TestWatchFileRemoved(t *testing.T) {
	for _, how := range []string{"remove", "rename", "remove directory"} {
		t.Run(how, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "netns")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "target")
			other := filepath.Join(dir, "other")
			for _, p := range []string{path, other} {
				if err := os.WriteFile(p, nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			w, err := watchTarget(&conf.Config{Netns: path})
			if err != nil {
				t.Fatal(err)
			}
			defer w.close()
			if w.notify == nil {
				t.Skip("no inotify here")
			}
			// Another file's going is no news.
			if err := os.Remove(other); err != nil {
				t.Fatal(err)
			}
			select {
			case e := <-w.events:
				t.Fatalf("event %v for another file", e)
			case <-time.After(50 * time.Millisecond):
			}
			start := time.Now()
			switch how {
			case "remove":
				err = os.Remove(path)
			case "rename":
				err = os.Rename(path, path+".old")
			default:
				err = os.RemoveAll(dir)
			}
			if err != nil {
				t.Fatal(err)
			}
			took := waitEvent(t, w, start)
			t.Logf("told after %v", took)
			if took > watchLimit {
				t.Errorf("told after %v, want less than %v", took, watchLimit)
			}
		})
	}
}

func TestWatchProcessExit(t *testing.T) {
	for _, viaPath := range []bool{false, true} {
		name := "pid"
		if viaPath {
			name = "path"
		}
		t.Run(name, func(t *testing.T) {
			cmd := exec.Command("sleep", "60")
			if err := cmd.Start(); err != nil {
				t.Skip(err)
			}
			defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
			cfg := &conf.Config{TargetPID: cmd.Process.Pid}
			if viaPath {
				cfg = &conf.Config{Netns: "/proc/" + strconv.Itoa(cmd.Process.Pid) + "/ns/net"}
			}
			w, err := watchTarget(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer w.close()
			if w.notify == nil {
				t.Skip("no pidfd here")
			}
			select {
			case e := <-w.events:
				t.Fatalf("event %v while the process runs", e)
			case <-time.After(50 * time.Millisecond):
			}
			start := time.Now()
			if err := cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			// Exited, not yet reaped: the namespace is gone all the same.
			took := waitEvent(t, w, start)
			t.Logf("told after %v", took)
			if took > watchLimit {
				t.Errorf("told after %v, want less than %v", took, watchLimit)
			}
		})
	}
}

func TestWatchProcessExitedAlready(t *testing.T) {
	// A zombie: exited, not yet reaped, its /proc directory still there.
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Skip(err)
	}
	defer func() { _ = cmd.Wait() }()
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	stat := "/proc/" + strconv.Itoa(cmd.Process.Pid) + "/stat"
	for start := time.Now(); ; time.Sleep(time.Millisecond) {
		if b, _ := os.ReadFile(stat); strings.Contains(string(b), ") Z ") {
			break
		}
		if time.Since(start) > 5*time.Second {
			t.Fatal("no zombie")
		}
	}
	w, err := watchTarget(&conf.Config{TargetPID: cmd.Process.Pid})
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	if w.notify == nil {
		t.Skip("no pidfd here")
	}
	waitEvent(t, w, time.Now())
}

func TestWatchNoNetnsQuit(t *testing.T) {
	w, err := watchTarget(&conf.Config{Netns: "/nonexistent/x", NoNetnsQuit: true})
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	if w.gone() || w.notify != nil {
		t.Errorf("watching with --no-netns-quit")
	}
}

func TestWatchClose(t *testing.T) {
	// close ends the goroutine reading the watch (it waits for it).
	path := filepath.Join(t.TempDir(), "target")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := watchTarget(&conf.Config{Netns: path})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { w.close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("close hangs")
	}
}

func TestProcNetnsPID(t *testing.T) {
	for path, want := range map[string]int{
		"/proc/123/ns/net":      123,
		"/proc/123/ns/net/":     123,
		"/proc//123/ns/net":     123,
		"/proc/self/ns/net":     0,
		"/proc/0/ns/net":        0,
		"/proc/0123/ns/net":     0,
		"/proc/123/ns/user":     0,
		"/proc/1/task/1/ns/net": 0,
		"/run/netns/123":        0,
		"123":                   0,
	} {
		if got := procNetnsPID(path); got != want {
			t.Errorf("procNetnsPID(%q) = %d, want %d", path, got, want)
		}
	}
}

func TestParseEvents(t *testing.T) {
	w := &targetWatch{base: "target"}
	ev := func(mask uint32, name string) []byte {
		n := 0
		if name != "" {
			n = (len(name) + 1 + 15) &^ 15 // padded with NULs, as the kernel does
		}
		b := make([]byte, unix.SizeofInotifyEvent+n)
		binary.NativeEndian.PutUint32(b[4:], mask)
		binary.NativeEndian.PutUint32(b[12:], uint32(n))
		copy(b[unix.SizeofInotifyEvent:], name)
		return b
	}
	cat := func(bs ...[]byte) (out []byte) {
		for _, b := range bs {
			out = append(out, b...)
		}
		return out
	}
	for _, c := range []struct {
		name          string
		b             []byte
		look, ignored bool
	}{
		{"other file", ev(unix.IN_DELETE, "other"), false, false},
		{"prefix", ev(unix.IN_DELETE, "targetx"), false, false},
		{"deleted", ev(unix.IN_DELETE, "target"), true, false},
		{"moved away", ev(unix.IN_MOVED_FROM, "target"), true, false},
		{"after another", cat(ev(unix.IN_DELETE, "other"), ev(unix.IN_DELETE, "target")), true, false},
		{"directory gone", cat(ev(unix.IN_DELETE_SELF, ""), ev(unix.IN_IGNORED, "")), true, true},
		{"unmounted", cat(ev(unix.IN_UNMOUNT, ""), ev(unix.IN_IGNORED, "")), true, true},
		{"overflow", ev(unix.IN_Q_OVERFLOW, ""), true, false},
		{"truncated", ev(unix.IN_DELETE, "target")[:unix.SizeofInotifyEvent+3], false, false},
		{"short", []byte{1, 2, 3}, false, false},
	} {
		look, ignored := w.parseEvents(c.b)
		if look != c.look || ignored != c.ignored {
			t.Errorf("%s: look %v ignored %v, want %v %v", c.name, look, ignored, c.look, c.ignored)
		}
	}
}
