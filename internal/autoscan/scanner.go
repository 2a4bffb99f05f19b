package autoscan

import (
	"github.com/gopasst/gopasst/internal/conf"
)

// Scanner keeps the automatic forwards of one protocol and direction up to
// date. Create it with [NewScanner] and call [Scanner.Step] once a second;
// open and close the listeners it reports. A Scanner is not safe for
// concurrent use; Rules, ReadBound and Own must not change while Step runs.
type Scanner struct {
	// Rules are the automatic rules, see [RulesFor].
	Rules []conf.PortRule
	// ReadBound reads the socket table of the other side, for example
	// [Tables.Read] of tables opened in the namespace (for -u and -t) or
	// on the host (for -U and -T).
	ReadBound func() ([]Socket, error)
	// Own returns the inodes of gopasst's own sockets (in gopasst, the
	// UDP engine's record of the sockets it opened); nil means none.
	Own func() (map[uint64]bool, error)

	current []Fwd
}

// NewScanner returns a Scanner for rules reading bound sockets with
// readBound, starting with no forwards open.
func NewScanner(rules []conf.PortRule, readBound func() ([]Socket, error)) *Scanner {
	return &Scanner{Rules: rules, ReadBound: readBound}
}

// Step rescans and returns the forwards to open and to close, and records
// the result as current: the caller is expected to close the ones in close
// (first) and open the ones in open, reporting those it could not open
// with [Scanner.Forget] so they are tried again next time, as the reference
// does (it retries failed auto listeners at every scan).
//
// The table is read, and only if some socket in it matters for the rules,
// the inodes of this process's sockets, then the table again; sockets in both reads
// that are not this process's count (see the package documentation). On
// error nothing changes: the current forwards are kept rather than all
// closed because of, say, a transient read failure.
func (s *Scanner) Step() (open, close []Fwd, err error) {
	first, err := s.ReadBound()
	if err != nil {
		return nil, nil, err
	}
	want := Desired(s.Rules, first, nil)
	if len(want) > 0 {
		var own map[uint64]bool
		if s.Own != nil {
			if own, err = s.Own(); err != nil {
				return nil, nil, err
			}
		}
		second, err := s.ReadBound()
		if err != nil {
			return nil, nil, err
		}
		want = Desired(s.Rules, stable(first, second), own)
	}
	open, close = Diff(s.current, want)
	s.current = want
	return open, close, nil
}

// stable returns the sockets of a that are also in b.
func stable(a, b []Socket) []Socket {
	inB := make(map[Socket]bool, len(b))
	for _, s := range b {
		inB[s] = true
	}
	var out []Socket
	for _, s := range a {
		if inB[s] {
			out = append(out, s)
		}
	}
	return out
}

// Current returns the forwards the Scanner considers open, sorted. The
// slice must not be modified.
func (s *Scanner) Current() []Fwd { return s.current }

// Forget removes fs from the current forwards, typically because opening
// them failed; the next [Scanner.Step] reports them to open again if they
// are still desired.
func (s *Scanner) Forget(fs ...Fwd) {
	if len(fs) == 0 || len(s.current) == 0 {
		return
	}
	drop := make(map[Fwd]bool, len(fs))
	for _, f := range fs {
		drop[f] = true
	}
	kept := make([]Fwd, 0, len(s.current))
	for _, f := range s.current {
		if !drop[f] {
			kept = append(kept, f)
		}
	}
	s.current = kept
}

// Reset forgets all current forwards and returns them, for the caller to
// close, for example at shutdown or before changing Rules.
func (s *Scanner) Reset() []Fwd {
	cur := s.current
	s.current = nil
	return cur
}
