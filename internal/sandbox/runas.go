package sandbox

import (
	"fmt"
	"os/user"
	"strconv"
	"strings"
)

// LookupRunAs resolves a --runas value, UID, UID:GID, LOGIN or
// LOGIN:GROUP, as the reference does: a numeric UID without a group also
// gives the GID (the same number, not the user's group), a login gives its
// primary group; numbers may be decimal, octal (0...) or hexadecimal
// (0x...), as C's strtol reads them. A login whose UID is 0 is refused, as
// by the reference (to run as root, say so with a number).
func LookupRunAs(spec string) (uid, gid int, err error) {
	u, g, hasGroup := strings.Cut(spec, ":")
	if u == "" || hasGroup && g == "" {
		return 0, 0, fmt.Errorf("--runas %q: expected UID, UID:GID, LOGIN or LOGIN:GROUP", spec)
	}
	if n, ok := parseID(u); ok {
		uid, gid = n, n
	} else {
		pw, err := user.Lookup(u)
		if err != nil {
			return 0, 0, fmt.Errorf("--runas %s: %w", spec, err)
		}
		uid, _ = parseID(pw.Uid)
		gid, _ = parseID(pw.Gid)
		if uid == 0 {
			return 0, 0, fmt.Errorf("--runas %s: login %s has UID 0", spec, u)
		}
	}
	if !hasGroup {
		return uid, gid, nil
	}
	if n, ok := parseID(g); ok {
		return uid, n, nil
	}
	gr, err := user.LookupGroup(g)
	if err != nil {
		return 0, 0, fmt.Errorf("--runas %s: %w", spec, err)
	}
	gid, _ = parseID(gr.Gid)
	return uid, gid, nil
}

// parseID reads a user or group ID as strtol(s, NULL, 0) would.
func parseID(s string) (int, bool) {
	n, err := strconv.ParseUint(s, 0, 32)
	if err != nil || n == 1<<32-1 { // (uid_t)-1 means "unchanged"
		return 0, false
	}
	return int(n), true
}
