package sockaddr

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// unprivPortStart is where the kernel reads the first port that binding
// needs no privilege for (the reading thread's network namespace).
const unprivPortStart = "/proc/sys/net/ipv4/ip_unprivileged_port_start"

// BindError explains err, from binding a listening socket to port: EACCES
// for a port below net.ipv4.ip_unprivileged_port_start means that the
// process lacks CAP_NET_BIND_SERVICE in the user namespace owning the
// network namespace, which a rootless container engine's pasta does.
// Other errors are returned as they are.
func BindError(err error, port uint16) error {
	if !errors.Is(err, unix.EACCES) || port == 0 {
		return err
	}
	start := 1024
	b, rerr := os.ReadFile(unprivPortStart)
	if rerr == nil {
		if n, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil {
			start = n
		}
	}
	if int(port) >= start {
		return err
	}
	return fmt.Errorf("%w: ports below %d need CAP_NET_BIND_SERVICE (net.ipv4.ip_unprivileged_port_start is %d): forward a port of %d or more, or lower that sysctl",
		err, start, start, start)
}
