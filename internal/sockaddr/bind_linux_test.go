package sockaddr

import (
	"errors"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestBindError(t *testing.T) {
	err := BindError(unix.EACCES, 80)
	if !errors.Is(err, unix.EACCES) || !strings.Contains(err.Error(), "ip_unprivileged_port_start") {
		t.Errorf("EACCES on port 80: %v", err)
	}
	if err := BindError(unix.EADDRINUSE, 80); err != unix.EADDRINUSE {
		t.Errorf("EADDRINUSE changed: %v", err)
	}
	if err := BindError(unix.EACCES, 65535); err != unix.EACCES {
		t.Errorf("EACCES on a high port changed: %v", err)
	}
}
