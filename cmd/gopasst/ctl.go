package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/gopasst/gopasst/internal/conf"
	"github.com/gopasst/gopasst/internal/ctl"
	"github.com/gopasst/gopasst/internal/fwd"
)

// ctlTimeout bounds a control client's whole conversation.
const ctlTimeout = 15 * time.Second

const ctlUsage = `usage: gopasst ctl SOCKET COMMAND
commands:
  list              show the forwarding rules
  add OPTION SPEC   add the rules of a port specification, e.g. "add -t 8080",
                    "add -u 5353:53", "add -T 9000" (OPTION: -t, -u, -T, -U)
  del OPTION SPEC   delete such rules (as they were added)
  flows             list the flows
  stats             show the counters
SOCKET is the path given to gopasst's -c/--conf-path.
`

// ctlMain runs "gopasst ctl SOCKET COMMAND [ARG]..." and returns the exit
// status.
func ctlMain(args []string, stdout, stderr io.Writer) int {
	if len(args) == 1 && (args[0] == "-h" || args[0] == "--help") {
		fmt.Fprint(stdout, ctlUsage)
		return 0
	}
	if len(args) < 2 {
		fmt.Fprint(stderr, ctlUsage)
		return 1
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "gopasst ctl: %v\n", oneLine(err.Error()))
		return 1
	}
	path, cmd, rest := args[0], args[1], args[2:]
	var op ctl.Op
	arg := ""
	switch cmd {
	case "list":
	case "add", "del":
		op = ctl.OpAdd
		if cmd == "del" {
			op = ctl.OpDel
		}
		if len(rest) == 0 {
			return fail(fmt.Errorf("%s: expected OPTION SPEC, e.g. -t 8080", cmd))
		}
		arg = strings.Join(rest, " ")
		rest = nil
	case "flows":
		op = ctl.OpFlows
	case "stats":
		op = ctl.OpStats
	default:
		fmt.Fprint(stderr, ctlUsage)
		return 1
	}
	if len(rest) > 0 {
		return fail(fmt.Errorf("%s takes no argument", cmd))
	}
	cl, err := ctl.Dial(path, ctlTimeout)
	if err != nil {
		return fail(err)
	}
	defer cl.Close()
	if cmd == "list" {
		showTables(stdout, cl.Tables)
		return 0
	}
	text, err := cl.Do(op, arg)
	if err != nil {
		return fail(err)
	}
	fmt.Fprint(stdout, text)
	return 0
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// showTables prints tables as pesto does.
func showTables(w io.Writer, ts []ctl.Table) {
	for _, t := range ts {
		fmt.Fprintf(w, "  %s\n", t.Name)
		for _, r := range t.Rules {
			fmt.Fprintf(w, "    %s\n", r)
		}
	}
}

const pestoUsage = `Usage: %s [OPTION]... PATH

  -A, --add             Add following specifiers to forwards
  -D, --delete          Delete following specifiers instead
  -C, --clear PIF       Clear forwarding table for given PIF
  -t, --tcp-ports SPEC  TCP inbound port forwarding
  -u, --udp-ports SPEC  UDP inbound port forwarding
  -T, --tcp-ns SPEC     TCP port forwarding to init namespace
  -U, --udp-ns SPEC     UDP port forwarding to init namespace
    SPEC as for passt(1) and pasta(1)
  -s, --show            Show configuration before and after
  -d, --debug           Print debugging messages
  -h, --help            Display this help message and exit
  --version             Show version and exit

gopasst's pesto: PATH is the socket of -c/--conf-path.
`

// pestoOpt is one option of the pesto command line, in order.
type pestoOpt struct {
	name byte // A, D, C, t, u, T, U
	arg  string
}

// pestoMain behaves as upstream's pesto client: without changes it shows
// the tables; -t, -u, -T and -U replace a table (or, after -A or -D, add
// to it or delete from it), -C clears one, in order; the new tables are
// sent at the end. Against gopasst, a refused change is an error.
func pestoMain(argv []string, stdout, stderr io.Writer) int {
	prog := "pesto"
	fail := func(err error) int {
		fmt.Fprintf(stderr, "%s: %v\n", prog, oneLine(err.Error()))
		return 1
	}
	var opts []pestoOpt
	var path string
	show, debug := false, false
	long := map[string]byte{"add": 'A', "delete": 'D', "clear": 'C', "tcp-ports": 't', "udp-ports": 'u',
		"tcp-ns": 'T', "udp-ns": 'U', "show": 's', "debug": 'd', "help": 'h', "version": 'v'}
	args := argv[1:]
	for i := 0; i < len(args); i++ {
		a := args[i]
		var name byte
		var val string
		hasVal := false
		switch {
		case strings.HasPrefix(a, "--") && len(a) > 2:
			n, v, eq := strings.Cut(a[2:], "=")
			c, ok := long[n]
			if !ok {
				return fail(fmt.Errorf("unknown option %s (see --help)", a))
			}
			name, val, hasVal = c, v, eq
		case strings.HasPrefix(a, "-") && len(a) >= 2:
			name = a[1]
			if len(a) > 2 {
				val, hasVal = a[2:], true
			}
		default:
			if path != "" {
				return fail(fmt.Errorf("more than one PATH (%s, %s)", path, a))
			}
			path = a
			continue
		}
		switch name {
		case 'C', 't', 'u', 'T', 'U':
			if !hasVal {
				if i+1 >= len(args) {
					return fail(fmt.Errorf("%s needs an argument", a))
				}
				i++
				val = args[i]
			}
			opts = append(opts, pestoOpt{name, val})
			continue
		}
		if hasVal {
			return fail(fmt.Errorf("%s takes no argument", a))
		}
		switch name {
		case 'A', 'D':
			opts = append(opts, pestoOpt{name: name})
		case 's':
			show = true
		case 'd':
			debug = true
		case 'h':
			fmt.Fprintf(stdout, pestoUsage, prog)
			return 0
		case 'v':
			fmt.Fprintf(stdout, "pesto (gopasst) %s\n", conf.Version)
			return 0
		default:
			fmt.Fprintf(stderr, pestoUsage, prog)
			return 1
		}
	}
	if path == "" {
		fmt.Fprintf(stderr, pestoUsage, prog)
		return 1
	}
	cl, err := ctl.Dial(path, ctlTimeout)
	if err != nil {
		return fail(fmt.Errorf("connecting to %s: %w", path, err))
	}
	defer cl.Close()
	if debug {
		for _, t := range cl.Tables {
			fmt.Fprintf(stderr, "PIF %d: %s, %d rules, capabilities 0x%x\n", t.PIF, t.Name, len(t.Rules), t.Caps)
		}
	}
	if len(opts) == 0 {
		fmt.Fprintf(stdout, "passt/pasta configuration (%s)\n", path)
		showTables(stdout, cl.Tables)
		return 0
	}
	if show {
		fmt.Fprintf(stdout, "Previous configuration (%s)\n", path)
		showTables(stdout, cl.Tables)
	}
	if err := editTables(cl.Tables, opts); err != nil {
		return fail(err)
	}
	if show {
		fmt.Fprintf(stdout, "Updated configuration (%s)\n", path)
		showTables(stdout, cl.Tables)
	}
	us := make([]ctl.Update, len(cl.Tables))
	for i, t := range cl.Tables {
		us[i] = ctl.Update{PIF: t.PIF, Rules: t.Rules}
	}
	switch err := cl.Update(us); {
	case errors.Is(err, ctl.ErrNoExtension):
		// Upstream passt: the update was sent, and it says nothing.
	case err != nil:
		return fail(fmt.Errorf("update refused, nothing changed: %w", err))
	}
	return 0
}

// editTables applies pesto's options to the tables, in order.
func editTables(ts []ctl.Table, opts []pestoOpt) error {
	find := func(name string) *ctl.Table {
		for i := range ts {
			if ts[i].Name == name {
				return &ts[i]
			}
		}
		return nil
	}
	mode := byte(0) // replace, 'A' add, 'D' delete
	cleared := map[string]bool{}
	eph, err := conf.SystemEphemeralRange()
	if err != nil {
		eph = conf.DefaultEphemeral
	}
	for _, o := range opts {
		switch o.name {
		case 'A', 'D':
			mode = o.name
			continue
		case 'C':
			t := find(o.arg)
			if t == nil {
				return fmt.Errorf("unsupported pif name %s", o.arg)
			}
			t.Rules, cleared[o.arg] = nil, true
			continue
		}
		name, proto := "HOST", fwd.TCP
		if o.name == 'T' || o.name == 'U' {
			name = "SPLICE"
		}
		if o.name == 'u' || o.name == 'U' {
			proto = fwd.UDP
		}
		t := find(name)
		if t == nil {
			return fmt.Errorf("can't use -%c, no %s table", o.name, name)
		}
		if mode == 0 && !cleared[name] {
			t.Rules, cleared[name] = nil, true
		}
		capProto := uint32(ctl.CapTCP)
		if proto == fwd.UDP {
			capProto = ctl.CapUDP
		}
		mo := conf.ModePasst
		if t.Caps&ctl.CapScan != 0 {
			mo = conf.ModePasta
		}
		f, err := conf.ParseForward(o.arg, conf.SpecOptions{
			Opt: o.name, Mode: mo, Ephemeral: eph,
			IPv4Only: t.Caps&ctl.CapIPv6 == 0, IPv6Only: t.Caps&ctl.CapIPv4 == 0,
			Disabled: t.Caps&capProto == 0,
		})
		if err != nil {
			return err
		}
		if f.Mode == conf.FwdNone {
			if slices.ContainsFunc(t.Rules, func(r ctl.Rule) bool { return r.Proto == proto }) {
				return fmt.Errorf("-%c none conflicts with previous options", o.name)
			}
			continue
		}
		var rules []ctl.Rule
		for _, r := range f.Rules {
			rules = append(rules, ctl.Rule{Proto: proto, PortRule: r})
		}
		for _, r := range f.AutoRules {
			rules = append(rules, ctl.Rule{Proto: proto, PortRule: r, Auto: true})
		}
		for _, r := range rules {
			if mode == 'D' {
				i := slices.IndexFunc(t.Rules, r.Equal)
				if i < 0 {
					return fmt.Errorf("no rule %s to delete", r)
				}
				t.Rules = slices.Delete(t.Rules, i, i+1)
				continue
			}
			for _, old := range t.Rules {
				if r.Conflicts(old) {
					return fmt.Errorf("forwarding configuration conflict: %s versus %s", r, old)
				}
			}
			t.Rules = append(t.Rules, r)
		}
	}
	return nil
}

// runCtl dispatches the control clients: "gopasst ctl ..." and a binary
// named pesto. ok is false for anything else.
func runCtl(argv []string) (code int, ok bool) {
	if len(argv) > 0 && strings.HasPrefix(baseName(argv[0]), "pesto") {
		return pestoMain(argv, os.Stdout, os.Stderr), true
	}
	if len(argv) > 1 && argv[1] == "ctl" {
		return ctlMain(argv[2:], os.Stdout, os.Stderr), true
	}
	return 0, false
}

func baseName(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}
