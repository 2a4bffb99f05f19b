package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == loadArg {
		os.Exit(loadMain(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "zerocopy" {
		os.Exit(zerocopyMain(os.Args[2:], os.Stdout, os.Stderr))
	}
	os.Exit(benchMain(os.Args[1:], os.Stdout, os.Stderr))
}

// gopasstPackage is built when -gopasst is not given.
const gopasstPackage = "github.com/gopasst/gopasst/cmd/gopasst"

// Options are the benchmark's command line.
type Options struct {
	// Dur is the measured time of a goodput or flows trial, Warmup the
	// time before it.
	Dur, Warmup time.Duration
	// RRDur is the measured time of a request/response trial.
	RRDur time.Duration
	// StepDur is the time of one step of the loss search, Steps their
	// number.
	StepDur time.Duration
	Steps   int
	// Reps is the number of repetitions.
	Reps int
	// FlowRate is the datagram rate of the flows trials, Flows their
	// numbers of flows.
	FlowRate float64
	Flows    []int
	// Run selects scenarios by name.
	Run *regexp.Regexp
	// Out and JSON name the files for the table and the trials.
	Out, JSON string
	// Gopasst and Pasta are the binaries, User the unprivileged user
	// that runs them.
	Gopasst, Pasta, User string
	// Pasta2 is a second reference binary, run beside the first if set.
	Pasta2 string
	// Pcap names a directory for captures of every trial (-p); empty:
	// none.
	Pcap string
	// NoOffload adds the variant "gopasst --no-offload" to the scenarios
	// that ask for variants.
	NoOffload bool
	// Veth adds the kernel baselines (a veth pair, the loopback) to the
	// scenarios that name one (see veth.go).
	Veth bool
}

// Bench is one run of the benchmark.
type Bench struct {
	opt      Options
	sb       *sandbox.Sandbox
	probe    *started // a process in the sandbox's host namespace
	self     string   // this binary, for the load tools
	uid, gid int
	trs      []*Translator
	trials   []Trial
	log      io.Writer
}

// parseFlags parses args; -quick changes the defaults of the flags not
// given.
func parseFlags(args []string, stderr io.Writer) (Options, error) {
	var o Options
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.DurationVar(&o.Dur, "dur", 1500*time.Millisecond, "measured `time` of each goodput and flows trial")
	fs.DurationVar(&o.Warmup, "warmup", 500*time.Millisecond, "`time` of load before measuring")
	fs.DurationVar(&o.RRDur, "rr-dur", 2*time.Second, "measured `time` of each request/response trial")
	fs.DurationVar(&o.StepDur, "step-dur", time.Second, "`time` of each step of the loss search")
	fs.IntVar(&o.Steps, "steps", 6, "`number` of steps of the loss search")
	fs.IntVar(&o.Reps, "reps", 3, "`number` of repetitions")
	fs.Float64Var(&o.FlowRate, "flow-rate", 20000, "datagrams per second of the flows trials")
	flows := fs.String("flows", "1,1000,10000", "comma-separated `numbers` of flows")
	run := fs.String("run", "", "run only the scenarios whose names match `regexp`")
	quick := fs.Bool("quick", false, "short trials, one repetition, fewer steps (a smoke test)")
	fs.StringVar(&o.Out, "o", "", "also write the markdown table to `file`")
	fs.StringVar(&o.JSON, "json", "", "write every trial as JSON to `file`")
	fs.StringVar(&o.Gopasst, "gopasst", "", "gopasst `binary` (default: go build "+gopasstPackage+")")
	fs.StringVar(&o.Pasta, "pasta", "/usr/bin/pasta", "reference pasta `binary`")
	fs.StringVar(&o.Pasta2, "pasta2", "", "a second reference pasta `binary`, run in every scenario beside the first (e.g. /opt/passt-trixie/usr/bin/pasta, see reference-trixie.sh)")
	fs.StringVar(&o.User, "user", "gopasst-test", "unprivileged `user` that runs the translators (created if missing)")
	fs.StringVar(&o.Pcap, "pcap", "", "capture the tap traffic of every trial into `dir` (slows the translators down)")
	fs.BoolVar(&o.NoOffload, "no-offload", true, "also run \"gopasst --no-offload\" in the tap goodput scenarios")
	fs.BoolVar(&o.Veth, "veth", true, "also run the kernel baselines, no translator: a veth pair on the TCP tap paths and for ping, the loopback on the TCP splice paths")
	list := fs.Bool("list", false, "list the scenarios and exit")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: bench [FLAGS]   (as root)\n\nRuns gopasst and the reference pasta side by side; see the package documentation.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *quick {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		quickDefaults := map[string]func(){
			"dur": func() { o.Dur = 500 * time.Millisecond }, "warmup": func() { o.Warmup = 300 * time.Millisecond },
			"rr-dur": func() { o.RRDur = 500 * time.Millisecond }, "step-dur": func() { o.StepDur = 300 * time.Millisecond },
			"steps": func() { o.Steps = 2 }, "reps": func() { o.Reps = 1 },
		}
		for name, f := range quickDefaults {
			if !set[name] {
				f()
			}
		}
	}
	var err error
	if o.Run, err = regexp.Compile(*run); err != nil {
		return o, err
	}
	for _, s := range strings.Split(*flows, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return o, fmt.Errorf("bad -flows %q", *flows)
		}
		o.Flows = append(o.Flows, n)
	}
	if o.Reps < 1 || o.Steps < 1 || o.Dur <= 0 || o.FlowRate <= 0 {
		return o, errors.New("-reps, -steps, -dur and -flow-rate must be positive")
	}
	if *list {
		for _, s := range scenarios(&Bench{opt: o}) {
			if o.Run.MatchString(s.Name) {
				fmt.Fprintln(stderr, s.Name)
			}
		}
		return o, flag.ErrHelp
	}
	return o, nil
}

// benchMain runs the benchmark and returns the exit status: 0 if every
// trial worked, 1 if some failed (the table is printed anyway), 2 for
// usage errors.
func benchMain(args []string, stdout, stderr io.Writer) int {
	opt, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return 2
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	b := &Bench{opt: opt, log: stderr}
	cleanup, err := b.setup()
	defer cleanup()
	if err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return 1
	}
	failed := b.runAll(ctx)
	table := b.table()
	fmt.Fprint(stdout, table)
	if opt.Out != "" {
		if err := os.WriteFile(opt.Out, []byte(table), 0o644); err != nil {
			fmt.Fprintln(stderr, "bench:", err)
			return 1
		}
	}
	if opt.JSON != "" {
		j, _ := json.MarshalIndent(b.trials, "", "  ")
		if err := os.WriteFile(opt.JSON, append(j, '\n'), 0o644); err != nil {
			fmt.Fprintln(stderr, "bench:", err)
			return 1
		}
	}
	if failed || ctx.Err() != nil {
		return 1
	}
	return 0
}

// setup checks the machine, builds gopasst, and creates the sandbox. The
// returned function undoes what was done, also after an error.
func (b *Bench) setup() (func(), error) {
	var undo []func()
	cleanup := func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	if os.Geteuid() != 0 {
		return cleanup, errors.New("needs root (namespaces, nsenter, users)")
	}
	for _, tool := range []string{"ip", "nsenter", "setpriv", "unshare"} {
		if _, err := exec.LookPath(tool); err != nil {
			return cleanup, fmt.Errorf("%s: %w", tool, err)
		}
	}
	if _, err := os.Stat(b.opt.Pasta); err != nil {
		return cleanup, fmt.Errorf("reference pasta: %w", err)
	}
	if b.opt.Pasta2 != "" {
		if _, err := os.Stat(b.opt.Pasta2); err != nil {
			return cleanup, fmt.Errorf("second reference pasta: %w", err)
		}
	}
	var err error
	if b.self, err = os.Executable(); err != nil {
		return cleanup, err
	}
	if err := b.lookupUser(); err != nil {
		return cleanup, err
	}
	// The user opens the tap device.
	if err := os.Chmod("/dev/net/tun", 0o666); err != nil {
		return cleanup, err
	}
	// 10,000 flows take 10,000 sockets in the sender and in each
	// translator; both inherit this limit.
	nofile, err := raiseNofile(1 << 17)
	if err != nil {
		return cleanup, fmt.Errorf("RLIMIT_NOFILE: %w", err)
	}
	if need := uint64(slices.Max(b.opt.Flows)) + 1000; nofile < need {
		return cleanup, fmt.Errorf("RLIMIT_NOFILE is %d, %d flows need %d", nofile, slices.Max(b.opt.Flows), need)
	}
	gp := b.opt.Gopasst
	if gp == "" {
		// A directory the user may enter, for the binary it runs.
		dir, err := os.MkdirTemp("", "gopasst-bench-")
		if err != nil {
			return cleanup, err
		}
		undo = append(undo, func() { os.RemoveAll(dir) })
		if err := os.Chmod(dir, 0o755); err != nil {
			return cleanup, err
		}
		fmt.Fprintf(b.log, "building %s\n", gopasstPackage)
		if gp, err = sandbox.Build(gopasstPackage, dir); err != nil {
			return cleanup, err
		}
	}
	b.trs = []*Translator{{Name: "gopasst", Argv: []string{gp, "pasta"}}, {Name: "pasta", Argv: []string{b.opt.Pasta}}}
	if b.opt.Pasta2 != "" {
		b.trs = append(b.trs, &Translator{Name: pasta2, Argv: []string{b.opt.Pasta2}})
	}
	if b.opt.NoOffload {
		b.trs = append(b.trs, &Translator{Name: noOffload, Argv: []string{gp, "pasta", "--no-offload"}, Variant: true})
	}
	if b.opt.Veth {
		b.trs = append(b.trs, &Translator{Name: kernelVeth, Kernel: true}, &Translator{Name: kernelLoopback, Kernel: true})
	}
	sb, err := sandbox.Create()
	if err != nil {
		return cleanup, err
	}
	b.sb = sb
	undo = append(undo, func() {
		if err := sb.Close(); err != nil {
			fmt.Fprintln(b.log, "bench:", err)
		}
	})
	if b.opt.Pcap != "" {
		// The translators write as the user.
		if err := os.MkdirAll(b.opt.Pcap, 0o755); err != nil {
			return cleanup, err
		}
		if err := os.Chown(b.opt.Pcap, b.uid, b.gid); err != nil {
			return cleanup, err
		}
	}
	if b.probe, err = start(sb.Command(sb.HostNS, "sleep", "infinity")); err != nil {
		return cleanup, err
	}
	undo = append(undo, func() { b.probe.stop(syscall.SIGKILL, 0) })
	// The translators answer the namespace's echo requests from ping
	// sockets (the ping scenarios).
	restore, err := b.openPingRange()
	if err != nil {
		return cleanup, err
	}
	undo = append(undo, restore)
	return cleanup, nil
}

// lookupUser finds the user that runs the translators, creating it if
// needed (no home directory, no login shell).
func (b *Bench) lookupUser() error {
	u, err := user.Lookup(b.opt.User)
	if err != nil {
		if out, err := exec.Command("useradd", "-M", "-s", "/usr/sbin/nologin", b.opt.User).CombinedOutput(); err != nil {
			return fmt.Errorf("useradd %s: %v: %s", b.opt.User, err, out)
		}
		if u, err = user.Lookup(b.opt.User); err != nil {
			return err
		}
	}
	if b.uid, err = strconv.Atoi(u.Uid); err != nil {
		return err
	}
	if b.gid, err = strconv.Atoi(u.Gid); err != nil {
		return err
	}
	if b.uid == 0 {
		return fmt.Errorf("user %s is root; the reference pasta refuses to run as root", b.opt.User)
	}
	return nil
}

// translators returns the translators that run scenario s: gopasst and
// the reference, the variants if s asks for them, and its kernel
// baseline if it has one.
func (b *Bench) translators(s Scenario) []*Translator {
	var out []*Translator
	for _, tr := range b.trs {
		if tr.Kernel && tr.Name == s.Baseline || !tr.Kernel && (!tr.Variant || s.Variants) {
			out = append(out, tr)
		}
	}
	return out
}

// runAll runs the selected scenarios for each of their translators, Reps
// times, repetition after repetition. Within a repetition the translator
// that goes first rotates from one scenario to the next, and between
// repetitions (with two translators, the order alternates; with three,
// each goes first, second and third in turn). Every trial gets fresh
// translator instances. It reports whether some trial failed.
func (b *Bench) runAll(ctx context.Context) bool {
	var sel []Scenario
	trials := 0
	for _, s := range scenarios(b) {
		if b.opt.Run.MatchString(s.Name) {
			sel = append(sel, s)
			trials += len(b.translators(s))
		}
	}
	fmt.Fprintf(b.log, "%d scenarios, %d trials × %d repetitions\n", len(sel), trials, b.opt.Reps)
	failed := false
	start := time.Now()
	for rep := 0; rep < b.opt.Reps; rep++ {
		for i, s := range sel {
			trs := b.translators(s)
			for k := range trs {
				if ctx.Err() != nil {
					return true
				}
				tr := trs[(rep+i+k)%len(trs)]
				t := b.trial(ctx, s, tr, rep)
				b.trials = append(b.trials, t)
				failed = failed || t.Err != "" || !t.ViaOK || t.Bad > 0
				b.logTrial(t, time.Since(start))
			}
		}
	}
	return failed
}

// trial runs scenario s once with translator tr.
func (b *Bench) trial(ctx context.Context, s Scenario, tr *Translator, rep int) Trial {
	t := Trial{Scenario: s.Name, Translator: tr.Name, Rep: rep}
	extra := append([]string{}, s.Args...)
	if b.opt.Pcap != "" {
		name := fmt.Sprintf("%s-%s-%d.pcap", strings.ReplaceAll(s.Name, "/", "_"), strings.ReplaceAll(tr.Name, " ", ""), rep+1)
		extra = append(extra, "-p", filepath.Join(b.opt.Pcap, name))
	}
	var in *Instance
	var err error
	if tr.Kernel {
		in, err = b.startBaseline(ctx, tr, s)
	} else {
		in, err = b.startInstance(ctx, tr, s.TCP, extra...)
	}
	if err != nil {
		t.Err = err.Error()
		return t
	}
	defer in.Stop()
	if s.TCP {
		t.add(secTCPRSS, "Peak RSS, idle, TCP ports forwarded (started, gateways resolved)", "MiB ↓", in.RSS())
	} else {
		t.add(secRSS, "Peak RSS, idle (started, gateways resolved)", "MiB ↓", in.RSS())
	}
	if err := s.Run(ctx, b, in, &t); err != nil {
		t.Err = err.Error()
		t.Metrics = nil
	}
	if tr.Kernel {
		t.dropCosts()
	}
	return t
}

func (b *Bench) logTrial(t Trial, elapsed time.Duration) {
	var vals []string
	for _, m := range t.Metrics {
		if m.Section != secRSS {
			vals = append(vals, fmt.Sprintf("%s %s", format(m.Value), strings.TrimSuffix(strings.TrimSuffix(m.Unit, " ↑"), " ↓")))
		}
	}
	status := strings.Join(vals, ", ")
	if t.Err != "" {
		status = "FAILED: " + t.Err
	}
	fmt.Fprintf(b.log, "[%s] rep %d %-36s %-20s %s", elapsed.Round(time.Second), t.Rep+1, t.Scenario, t.Translator, status)
	if t.Note != "" {
		fmt.Fprintf(b.log, " (%s)", t.Note)
	}
	fmt.Fprintln(b.log)
}

// machine describes where the benchmark ran, for the table's header.
func machine() string {
	cpus := 0
	model := ""
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "processor") {
				cpus++
			}
			if v, ok := strings.CutPrefix(l, "model name"); ok && model == "" {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
			}
		}
	}
	var uts syscall.Utsname
	kernel := ""
	if syscall.Uname(&uts) == nil {
		for _, c := range uts.Release {
			if c == 0 {
				break
			}
			kernel += string(rune(c))
		}
	}
	return fmt.Sprintf("%d CPUs (%s), Linux %s", cpus, model, kernel)
}

// versions describes the translators.
func (b *Bench) versions() string {
	gp := "gopasst"
	if out, err := exec.Command("git", "describe", "--always", "--dirty").Output(); err == nil {
		gp += " " + strings.TrimSpace(string(out))
	}
	ref := "pasta " + b.opt.Pasta
	if out, err := exec.Command("dpkg-query", "-W", "-f", "${Version}", "passt").Output(); err == nil {
		ref += " (Debian passt " + strings.TrimSpace(string(out)) + ")"
	}
	if b.opt.Pasta2 != "" {
		// pasta prints its version without flushing when stdout is a
		// pipe; stdbuf makes it line-buffered.
		ref += " and " + pasta2 + " " + b.opt.Pasta2
		if out, err := exec.Command("stdbuf", "-o0", b.opt.Pasta2, "--version").Output(); err == nil {
			if line, _, _ := strings.Cut(string(out), "\n"); line != "" {
				ref += " (" + strings.TrimSpace(line) + ")"
			}
		}
	}
	return gp + " vs " + ref
}
