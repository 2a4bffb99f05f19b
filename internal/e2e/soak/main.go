package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
	"github.com/gopasst/gopasst/internal/e2e/watch"
)

// options are the soak's settings (see the flags in main).
type options struct {
	duration   time.Duration
	interval   time.Duration
	warmup     time.Duration
	udpTimeout int
	mtu        int
	udp, tcp   bool // the protocols of the load
	workers    int
	pause      time.Duration
	gopasst    string
	extraArgs  []string // more gopasst options (-gopasst-args)
	logFile    string   // where to keep gopasst's standard error (-log)
	race       bool
	seed       uint64
	maxLoss    float64
	// Tolerances of the flatness checks: the last third of the samples
	// against the first third.
	rssSlack    float64 // relative, on the mean
	rssSlackMiB float64 // plus absolute
	fdSlack     float64 // on the mean of descriptors not held by flows
	threadSlack int     // on the maximum
	gorSlack    int     // on the maximum
}

// defaults are the options of a run without flags.
func defaults() options {
	return options{duration: 10 * time.Minute, interval: 5 * time.Second, udpTimeout: 2, mtu: 1500,
		udp: true, tcp: true, workers: 1, pause: 10 * time.Millisecond, seed: 1, maxLoss: 0.02,
		rssSlack: 0.10, rssSlackMiB: 4, fdSlack: 16, threadSlack: 2, gorSlack: 2}
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "agent" {
		os.Exit(agentMain(os.Args[2:]))
	}
	o := defaults()
	flag.DurationVar(&o.duration, "duration", o.duration, "how long to run the load")
	flag.DurationVar(&o.interval, "interval", o.interval, "time between samples")
	flag.DurationVar(&o.warmup, "warmup", 0, "samples before this are not compared (default: a tenth of -duration, at least one -interval)")
	flag.IntVar(&o.udpTimeout, "udp-timeout", o.udpTimeout, "gopasst's --udp-timeout, seconds")
	mtus := flag.String("mtu", strconv.Itoa(o.mtu), "the namespace's MTU (gopasst -m); 0 keeps gopasst's default (65520); a comma-separated list runs one gopasst per MTU at once, each in its own sandbox")
	proto := flag.String("proto", "udp,tcp", "protocols of the load: udp, tcp or udp,tcp")
	flag.IntVar(&o.workers, "workers", o.workers, "concurrent flows or connections per path (12 paths per protocol)")
	flag.DurationVar(&o.pause, "pause", o.pause, "mean pause between the flows of a worker")
	flag.StringVar(&o.gopasst, "gopasst", "", "gopasst binary (default: build ./cmd/gopasst)")
	flag.BoolVar(&o.race, "race", false, "build gopasst with the race detector")
	extra := flag.String("gopasst-args", "", "more gopasst options, separated by spaces (say \"-d\" with -log)")
	flag.StringVar(&o.logFile, "log", "", "write gopasst's standard error to this file (with -mtu lists, FILE.MTU)")
	flag.Uint64Var(&o.seed, "seed", o.seed, "random seed")
	flag.Float64Var(&o.maxLoss, "max-loss", o.maxLoss, "largest fraction of datagrams a path may lose")
	flag.Parse()
	o.extraArgs = strings.Fields(*extra)
	var list []int
	for _, m := range strings.Split(*mtus, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(m))
		if err != nil || n < 0 {
			fmt.Fprintf(os.Stderr, "soak: bad -mtu %q\n", *mtus)
			os.Exit(2)
		}
		list = append(list, n)
	}
	var err error
	if o.udp, o.tcp, err = parseProto(*proto); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(2)
	}
	err = runMTUs(o, list, os.Stdout)
	if errors.Is(err, sandbox.ErrUnavailable) {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak: FAIL:", err)
		os.Exit(1)
	}
	fmt.Println("soak: PASS")
}

// gopasstPackage is built when no -gopasst binary is given.
const gopasstPackage = "github.com/gopasst/gopasst/cmd/gopasst"

// parseProto reads a -proto value.
func parseProto(s string) (udp, tcp bool, err error) {
	for _, p := range strings.Split(s, ",") {
		switch strings.TrimSpace(p) {
		case "udp":
			udp = true
		case "tcp":
			tcp = true
		default:
			return false, false, fmt.Errorf("bad protocol %q in %q (udp, tcp or udp,tcp)", p, s)
		}
	}
	return udp, tcp, nil
}

// protoString is the -proto value of o.
func (o *options) protoString() string {
	switch {
	case o.udp && o.tcp:
		return "udp,tcp"
	case o.tcp:
		return "tcp"
	}
	return "udp"
}

// buildGopasst builds gopasst into dir.
func buildGopasst(dir string, race bool) (string, error) {
	bin := filepath.Join(dir, "gopasst")
	args := []string{"build", "-o", bin}
	if race {
		args = append(args, "-race")
	}
	if out, err := exec.Command("go", append(args, gopasstPackage)...).CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %v\n%s", gopasstPackage, err, out)
	}
	return bin, nil
}

// runMTUs runs one soak per MTU, all at once, each with its own gopasst
// in its own sandbox, and writes their reports to w one after the other.
func runMTUs(o options, mtus []int, w io.Writer) error {
	if len(mtus) == 1 {
		o.mtu = mtus[0]
		return run(o, w)
	}
	if o.gopasst == "" {
		dir, err := os.MkdirTemp("", "gopasst-soak-bin-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		if o.gopasst, err = buildGopasst(dir, o.race); err != nil {
			return err
		}
	}
	outs := make([]strings.Builder, len(mtus))
	errs := make([]error, len(mtus))
	var wg sync.WaitGroup
	for i, m := range mtus {
		oi := o
		oi.mtu = m
		oi.seed = o.seed + uint64(i) // not the same mix everywhere
		if o.logFile != "" {
			oi.logFile = fmt.Sprintf("%s.%d", o.logFile, m)
		}
		wg.Go(func() { errs[i] = run(oi, &outs[i]) })
	}
	wg.Wait()
	var all []error
	for i, m := range mtus {
		fmt.Fprintf(w, "=== MTU %d ===\n%s\n", m, outs[i].String())
		if errs[i] != nil {
			if errors.Is(errs[i], sandbox.ErrUnavailable) {
				return errs[i]
			}
			all = append(all, fmt.Errorf("MTU %d: %w", m, errs[i]))
		}
	}
	return errors.Join(all...)
}

// run runs one soak and writes its report to w. It returns an error
// listing every violated check.
func run(o options, w io.Writer) error {
	if o.warmup == 0 {
		o.warmup = max(o.duration/10, o.interval)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "gopasst-soak-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	bin := o.gopasst
	if bin == "" {
		if bin, err = buildGopasst(dir, o.race); err != nil {
			return err
		}
	}
	sb, err := sandbox.Create()
	if err != nil {
		return err
	}
	defer sb.Close()

	ctl := func(state string) error {
		return os.WriteFile(filepath.Join(dir, "state"), []byte(state+"\n"), 0o644)
	}
	if err := ctl(""); err != nil {
		return err
	}
	agentArgs := func(role string) []string {
		return []string{"agent", "-role", role, "-ctl", dir, "-workers", strconv.Itoa(o.workers),
			"-pause", o.pause.String(), "-seed", strconv.FormatUint(o.seed, 10), "-proto", o.protoString()}
	}
	world, err := sb.Spawn(sb.WorldNS, self, agentArgs("world")...)
	if err != nil {
		return err
	}
	host, err := sb.Spawn(sb.HostNS, self, agentArgs("host")...)
	if err != nil {
		return err
	}
	for _, p := range []*sandbox.Proc{world, host} {
		if _, err := p.AwaitLine("ready", 10*time.Second); err != nil {
			return err
		}
	}
	pidFile := filepath.Join(dir, "gopasst.pid")
	args := []string{"pasta", "--config-net", "-P", pidFile, "--udp-timeout", strconv.Itoa(o.udpTimeout)}
	if o.udp {
		args = append(args, "-u", strconv.Itoa(nsEchoPort), "-U", strconv.Itoa(hostEchoPort))
	} else {
		args = append(args, "-u", "none", "-U", "none")
	}
	if o.tcp {
		args = append(args, "-t", strconv.Itoa(tcpNSPort), "-T", strconv.Itoa(tcpHostPort))
	} else {
		args = append(args, "-t", "none", "-T", "none")
	}
	if o.mtu > 0 {
		args = append(args, "-m", strconv.Itoa(o.mtu))
	}
	args = append(args, o.extraArgs...)
	args = append(append(append(args, "--", self), agentArgs("ns")...), "-tap", sandbox.IfName)
	gp, err := sb.Spawn(sb.HostNS, bin, args...)
	if err != nil {
		return err
	}
	if _, err := gp.AwaitLine("ready ns", 20*time.Second); err != nil {
		return err
	}
	pid, err := watch.ReadPID(pidFile)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "gopasst %s -- [namespace agent] (pid %d; seed %d)\n", strings.Join(args[:len(args)-len(agentArgs("ns"))-4], " "), pid, o.seed)
	m := &monitor{pid: pid, proc: gp}

	// Baseline: the idle process, once its descriptors settled.
	var base sample
	for i := 0; ; i++ {
		s, err := m.take(0)
		if err != nil {
			return err
		}
		if i > 0 && s.FDs == base.FDs {
			base = s
			break
		}
		base = s
		if i == 20 {
			return fmt.Errorf("descriptors of the idle gopasst do not settle: %d", s.FDs)
		}
		time.Sleep(200 * time.Millisecond)
	}
	tableHeader(w)
	base.row(w, nil)

	if err := ctl(stateRun); err != nil {
		return err
	}
	start := time.Now()
	var load []sample
	prev := base
	for next := o.interval; next <= o.duration; next += o.interval {
		time.Sleep(time.Until(start.Add(next)))
		s, err := m.take(time.Since(start))
		if err != nil {
			return err
		}
		s.row(w, &prev)
		load = append(load, s)
		prev = s
	}
	if err := ctl(stateStop); err != nil {
		return err
	}
	// Every flow expires: clients finish their last flow (at most four
	// echo waits), then the flow timeout passes and the once-a-second
	// expiry runs. TCP clients finish their last connection (within
	// tcpDeadline), and gopasst frees each once both sides closed.
	grace := 4*time.Second + time.Duration(o.udpTimeout)*time.Second + 10*time.Second
	if o.tcp {
		grace = max(grace, tcpDeadline+10*time.Second)
	}
	drain := time.Now().Add(grace)
	var final sample
	for {
		time.Sleep(500 * time.Millisecond)
		s, err := m.take(time.Since(start))
		if err != nil {
			return err
		}
		final = s
		if s.c("udp flows active") == 0 && s.c("tcp connections active") == 0 && s.FDs == base.FDs || time.Now().After(drain) {
			break
		}
	}
	fmt.Fprintf(w, "after the load, once every flow expired and every connection closed (%v):\n", (time.Since(start) - o.duration).Round(100*time.Millisecond))
	final.row(w, &prev)

	if err := ctl(stateExit); err != nil {
		return err
	}
	var sums []summary
	for _, p := range []*sandbox.Proc{world, host, gp} {
		line, err := p.AwaitLine(summaryTag, 20*time.Second)
		if err != nil {
			return err
		}
		var s summary
		if err := json.Unmarshal([]byte(strings.TrimPrefix(line, summaryTag)), &s); err != nil {
			return fmt.Errorf("agent summary %q: %v", line, err)
		}
		sums = append(sums, s)
	}
	code, werr := gp.Wait(20 * time.Second)
	if o.logFile != "" {
		if err := os.WriteFile(o.logFile, []byte(gp.Stderr()), 0o644); err != nil {
			return err
		}
	}

	r := &report{o: o, base: base, load: load, final: final, sums: sums, exit: code, exitErr: werr, stderr: gp.Stderr()}
	r.evaluate()
	r.print(w)
	if len(r.violations) > 0 {
		return errors.New(strings.Join(r.violations, "; "))
	}
	return nil
}
