package conf

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// option describes one command line option: its names, whether it takes an
// argument, the modes accepting it, its help text and what it does.
type option struct {
	long   []string // long names without "--"; the first is canonical
	short  byte     // short name, 0 if none
	hasArg bool     // a required argument follows
	modes  modeSet  // modes the option is valid in
	arg    string   // argument name in the help text
	help   string   // help text; further lines separated by "\n"
	apply  func(p *parser, val string) error
}

// modeSet is a set of [Mode] values.
type modeSet uint8

const (
	inPasta modeSet = 1 << ModePasta
	inPasst modeSet = 1 << ModePasst
	inBoth          = inPasta | inPasst
)

func (s modeSet) has(m Mode) bool { return s&(1<<m) != 0 }

// getopt splits arguments into options the way getopt_long(3) does with an
// optstring starting with '+': short options may be clustered ("-dq") and
// take their argument attached ("-u5000") or as the next argument; long
// options take theirs after '=' or as the next argument, and may be
// abbreviated to any unambiguous prefix; "--" ends the options, and so does
// the first argument not starting with '-' (or "-" itself).
type getopt struct {
	opts    []*option
	args    []string
	idx     int    // next argument to look at
	cluster string // unprocessed rest of a short option cluster
}

// next returns the next option, the name it was given by (e.g. "-u" or
// "--udp-ports") and its argument. At the end of the options it returns
// done, and g.idx indexes the first operand.
func (g *getopt) next() (o *option, used, val string, done bool, err error) {
	if g.cluster == "" {
		if g.idx >= len(g.args) {
			return nil, "", "", true, nil
		}
		a := g.args[g.idx]
		switch {
		case a == "--":
			g.idx++
			return nil, "", "", true, nil
		case len(a) < 2 || a[0] != '-':
			return nil, "", "", true, nil
		case strings.HasPrefix(a, "--"):
			g.idx++
			return g.long(a[2:])
		}
		g.idx++
		g.cluster = a[1:]
	}

	c := g.cluster[0]
	for _, opt := range g.opts {
		if opt.short != 0 && opt.short == c {
			o = opt
			break
		}
	}
	if o == nil {
		r, _ := utf8.DecodeRuneInString(g.cluster)
		g.cluster = ""
		return nil, "", "", false, fmt.Errorf("invalid option -- %s", quoteOpt(string(r)))
	}
	used = "-" + string(c)
	g.cluster = g.cluster[1:]
	if !o.hasArg {
		return o, used, "", false, nil
	}
	switch {
	case g.cluster != "":
		val, g.cluster = g.cluster, ""
	case g.idx < len(g.args):
		val = g.args[g.idx]
		g.idx++
	default:
		return nil, "", "", false, fmt.Errorf("option requires an argument -- '%c'", c)
	}
	return o, used, val, false, nil
}

// long handles "--name" and "--name=value", name possibly abbreviated.
func (g *getopt) long(arg string) (o *option, used, val string, done bool, err error) {
	name, val, hasVal := strings.Cut(arg, "=")
	o, full, err := g.lookupLong(name)
	if err != nil {
		return nil, "", "", false, err
	}
	used = "--" + full
	switch {
	case !o.hasArg && hasVal:
		return nil, "", "", false, fmt.Errorf("option '%s' doesn't allow an argument", used)
	case o.hasArg && !hasVal:
		if g.idx >= len(g.args) {
			return nil, "", "", false, fmt.Errorf("option '%s' requires an argument", used)
		}
		val = g.args[g.idx]
		g.idx++
	}
	return o, used, val, false, nil
}

// lookupLong finds the option named, or uniquely abbreviated, by name.
// Abbreviations matching several names of the same option are fine.
func (g *getopt) lookupLong(name string) (*option, string, error) {
	if name == "" {
		return nil, "", fmt.Errorf("unrecognized option '--'")
	}
	var found *option
	var full string
	var candidates []string
	ambiguous := false
	for _, o := range g.opts {
		for _, l := range o.long {
			if l == name {
				return o, l, nil
			}
			if !strings.HasPrefix(l, name) {
				continue
			}
			candidates = append(candidates, "'--"+l+"'")
			if found != nil && found != o {
				ambiguous = true
			}
			if found == nil {
				found, full = o, l
			}
		}
	}
	switch {
	case found == nil:
		return nil, "", fmt.Errorf("unrecognized option %s", quoteOpt("--"+name))
	case ambiguous:
		return nil, "", fmt.Errorf("option %s is ambiguous; possibilities: %s",
			quoteOpt("--"+name), strings.Join(candidates, " "))
	}
	return found, full, nil
}

// quoteOpt quotes an option name for a message the way getopt does, in
// single quotes, unless it has characters that need escaping.
func quoteOpt(s string) string {
	for _, r := range s {
		if !unicode.IsPrint(r) || r == '\'' || r == '\\' {
			return strconv.Quote(s)
		}
	}
	return "'" + s + "'"
}
