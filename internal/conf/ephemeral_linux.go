package conf

import "os"

// ephemeralSysctl is where Linux publishes its ephemeral port range.
const ephemeralSysctl = "/proc/sys/net/ipv4/ip_local_port_range"

// SystemEphemeralRange reads the ephemeral port range of the running
// system from procfs.
func SystemEphemeralRange() (PortRange, error) {
	f, err := os.Open(ephemeralSysctl)
	if err != nil {
		return PortRange{}, err
	}
	defer f.Close()
	return ReadEphemeralRange(f)
}
