package stats

import (
	"os"
	"os/signal"
	"syscall"

	"github.com/gopasst/gopasst/internal/log"
)

// DumpOnSIGUSR1 prints the counters to the log every time the process gets
// SIGUSR1, until the returned function is called.
func (c *Counters) DumpOnSIGUSR1() (stop func()) {
	sigs := make(chan os.Signal, 1)
	done := make(chan struct{})
	signal.Notify(sigs, syscall.SIGUSR1)
	go func() {
		for {
			select {
			case <-sigs:
				log.Printf("counters:\n%s", c)
			case <-done:
				return
			}
		}
	}()
	return func() {
		signal.Stop(sigs)
		close(done)
	}
}
