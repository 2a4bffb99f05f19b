// Package log is gopasst's small leveled logger.
//
// Messages go to one writer (standard error, or a file given with -l) with a
// timestamp in seconds since start, as the reference does. The level is a
// single atomic value, so checking whether a level is enabled costs one
// load: hot paths call [Enabled] before formatting anything.
package log

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Level orders messages by verbosity.
type Level int32

// Levels, from always shown to shown only with --trace.
const (
	LevelError Level = iota
	LevelWarn
	LevelInfo
	LevelDebug
	LevelTrace
)

var (
	level atomic.Int32
	mu    sync.Mutex
	out   io.Writer = os.Stderr
	start           = time.Now()
	// limit, when non-zero, caps the size of a log file: when a write would
	// pass it, the file is truncated and starts over.
	limit   int64
	written int64
)

func init() { level.Store(int32(LevelInfo)) }

// SetLevel sets the most verbose level that is printed.
func SetLevel(l Level) { level.Store(int32(l)) }

// Enabled reports whether messages at l are printed.
func Enabled(l Level) bool { return Level(level.Load()) >= l }

// SetOutput sends messages to w.
func SetOutput(w io.Writer) {
	mu.Lock()
	out, limit, written = w, 0, 0
	mu.Unlock()
}

// OpenFile sends messages to the file at path, truncated, keeping it under
// size bytes.
func OpenFile(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	mu.Lock()
	out, limit, written = f, size, 0
	mu.Unlock()
	return nil
}

func logf(l Level, format string, args ...any) {
	if !Enabled(l) {
		return
	}
	d := time.Since(start)
	msg := fmt.Sprintf("%d.%04d: "+format+"\n", append([]any{int64(d / time.Second), int64(d%time.Second) / 100000}, args...)...)
	mu.Lock()
	defer mu.Unlock()
	if limit > 0 && written+int64(len(msg)) > limit {
		if f, ok := out.(*os.File); ok {
			written = makeRoom(f, limit/2)
		} else {
			written = 0
		}
	}
	n, _ := io.WriteString(out, msg)
	written += int64(n)
}

// makeRoom keeps only the newest entries of log file f, at most keep
// bytes starting at a line, so that new entries fit (--log-size: old ones
// are removed from the beginning). It returns the new size.
func makeRoom(f *os.File, keep int64) int64 {
	st, err := f.Stat()
	if err != nil {
		return 0
	}
	size := st.Size()
	if size <= keep {
		return size
	}
	tail := make([]byte, keep)
	n, _ := f.ReadAt(tail, size-keep)
	tail = tail[:n]
	if i := bytes.IndexByte(tail, '\n'); i >= 0 {
		tail = tail[i+1:] // start at a whole entry
	}
	if err := f.Truncate(0); err != nil {
		return size
	}
	// The file is in append mode: the write lands at the new end, 0.
	m, _ := f.Write(tail)
	return int64(m)
}

// Errorf logs an error.
func Errorf(format string, args ...any) { logf(LevelError, format, args...) }

// Warnf logs a warning.
func Warnf(format string, args ...any) { logf(LevelWarn, format, args...) }

// Infof logs an informational message (hidden by -q).
func Infof(format string, args ...any) { logf(LevelInfo, format, args...) }

// Debugf logs a debugging message (-d).
func Debugf(format string, args ...any) { logf(LevelDebug, format, args...) }

// Tracef logs a per-packet message (--trace).
func Tracef(format string, args ...any) { logf(LevelTrace, format, args...) }

// Printf logs a message that was asked for (such as counters on SIGUSR1),
// whatever the level.
func Printf(format string, args ...any) { logf(LevelError, format, args...) }
