//go:build linux && !amd64 && !arm64

package sandbox

// auditArch is 0: there is no filter for this architecture, and Apply
// fails (use --no-sandbox).
const auditArch = 0

const x32Bit = 0

var archHotRules, archRuntimeRules []rule

func rules(profile) []rule { return nil }

const helperMode Mode = -1
