//go:build !linux

package conf

import "errors"

// SystemEphemeralRange reports that the ephemeral port range is unknown on
// this system; callers fall back to [DefaultEphemeral].
func SystemEphemeralRange() (PortRange, error) {
	return PortRange{}, errors.New("ephemeral port range unknown on this system")
}
