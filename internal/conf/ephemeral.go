package conf

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// ReadEphemeralRange parses the ephemeral port range in the format of
// Linux's net.ipv4.ip_local_port_range sysctl: two port numbers separated
// by white space on the first line, e.g. "32768\t60999\n".
func ReadEphemeralRange(r io.Reader) (PortRange, error) {
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil && err != io.EOF {
		return PortRange{}, err
	}
	f := strings.Fields(line)
	if len(f) != 2 {
		return PortRange{}, fmt.Errorf("malformed port range %q", strings.TrimSpace(line))
	}
	first, err1 := strconv.ParseUint(f[0], 10, 16)
	last, err2 := strconv.ParseUint(f[1], 10, 16)
	if err1 != nil || err2 != nil || first == 0 || last < first {
		return PortRange{}, fmt.Errorf("malformed port range %q", strings.TrimSpace(line))
	}
	return PortRange{First: uint16(first), Last: uint16(last)}, nil
}
