package evloop

import (
	"testing"
	"time"
)

// TestTimer: a timer armed on the loop's thread runs once its deadline
// passes, well before the once-a-second tick and not before the
// deadline; its function can arm it again; of two deadlines the earlier
// holds, and a timer that ran is no longer armed.
func TestTimer(t *testing.T) {
	l, err := New()
	if err != nil {
		t.Fatal(err)
	}
	fired := make(chan int64, 4)
	var tm *Timer
	rearm := true
	tm = l.NewTimer(func(now int64) {
		fired <- now
		if rearm {
			rearm = false
			tm.Arm(now + int64(30*time.Millisecond))
		}
	})
	go func() { _ = l.Run() }()
	defer func() {
		l.Close()
		<-l.Done()
	}()

	var armed int64
	if err := l.Do(func() {
		armed = Now()
		tm.Arm(armed + int64(500*time.Millisecond))
		tm.Arm(armed + int64(50*time.Millisecond)) // the earlier holds
		tm.Arm(armed + int64(400*time.Millisecond))
	}); err != nil {
		t.Fatal(err)
	}
	var first int64
	select {
	case first = <-fired:
	case <-time.After(2 * time.Second):
		t.Fatal("the timer did not run")
	}
	if d := time.Duration(first - armed); d < 50*time.Millisecond || d > 300*time.Millisecond {
		t.Errorf("ran %v after it was armed for 50ms", d)
	}
	select {
	case second := <-fired:
		if d := time.Duration(second - first); d < 30*time.Millisecond || d > 300*time.Millisecond {
			t.Errorf("ran again %v after it was armed again for 30ms", d)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the timer armed again did not run")
	}
	select {
	case <-fired:
		t.Error("the timer ran a third time, unarmed")
	case <-time.After(1200 * time.Millisecond):
	}
	if at := tm.at.Load(); at != 0 {
		t.Errorf("still armed for %d", at)
	}
}
