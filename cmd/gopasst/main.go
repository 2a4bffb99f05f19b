// Command gopasst gives virtual machines (passt mode) and network
// namespaces (pasta mode) network access through host sockets, without
// privileges and without a TCP/IP stack of its own.
//
// Usage:
//
//	gopasst pasta [OPTION]... [COMMAND [ARG]...]
//	gopasst pasta [OPTION]... PID
//	gopasst pasta [OPTION]... --netns PATH|NAME
//	gopasst passt [OPTION]...
//	gopasst ctl SOCKET list|add SPEC|del SPEC|flows|stats
//
// Invoked through a name that starts with "pasta" or "passt" (a symbolic
// link, say), gopasst runs in that mode directly, so it can stand in where
// the reference implementation is expected. The options follow the
// reference's passt(1) manual page. "gopasst ctl" is the client of the
// control socket (-c, --conf-path); invoked as "pesto", gopasst behaves as
// upstream's pesto client.
package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"

	"github.com/gopasst/gopasst/internal/conf"
	"github.com/gopasst/gopasst/internal/log"
	"github.com/gopasst/gopasst/internal/passt"
	"github.com/gopasst/gopasst/internal/pasta"
	"github.com/gopasst/gopasst/internal/protocols"
	"github.com/gopasst/gopasst/internal/sandbox"
)

func main() {
	if sandbox.IsHelper() {
		os.Exit(sandbox.HelperMain(os.Args[1:]))
	}
	os.Exit(profiled(os.Args))
}

// profiled runs gopasst, writing a CPU profile to the file named by
// $GOPASST_CPUPROFILE, if set, for "go tool pprof" (with --no-sandbox,
// which would refuse the profiler's timers on new threads). A "%p" in
// the name becomes the process ID: pasta's data path runs in a process
// of its own, beside the waiting parent, and each gets its file.
func profiled(argv []string) int {
	path := os.Getenv("GOPASST_CPUPROFILE")
	if path == "" {
		return run(argv)
	}
	path = strings.ReplaceAll(path, "%p", strconv.Itoa(os.Getpid()))
	f, err := os.Create(path)
	if err == nil {
		err = pprof.StartCPUProfile(f)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "gopasst: CPU profile: %v\n", err)
		return 1
	}
	defer f.Close()
	defer pprof.StopCPUProfile()
	return run(argv)
}

func run(argv []string) int {
	if code, ok := runCtl(argv); ok {
		return code
	}
	mode, args, ok := pickMode(argv)
	if !ok {
		fmt.Fprintf(os.Stderr, "usage: gopasst pasta|passt [OPTION]... (see gopasst pasta --help)\n")
		return 1
	}
	cfg, err := conf.Parse(mode, args)
	switch {
	case errors.Is(err, conf.ErrHelp):
		fmt.Print(conf.Usage(mode))
		return 0
	case errors.Is(err, conf.ErrVersion):
		fmt.Println(conf.Version)
		return 0
	case err != nil:
		fmt.Fprintf(os.Stderr, "%s: %v\n", name(mode), err)
		return 1
	}
	if err := setupLog(cfg); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name(mode), err)
		return 1
	}
	for _, w := range cfg.Warnings {
		log.Warnf("%s", w)
	}
	if mode == conf.ModePasst {
		return passt.Run(cfg, protocols.All)
	}
	return pasta.Run(cfg, protocols.All)
}

// pickMode finds the mode from the program name or the first argument.
func pickMode(argv []string) (conf.Mode, []string, bool) {
	base := filepath.Base(argv[0])
	switch {
	case strings.HasPrefix(base, "pasta"):
		return conf.ModePasta, argv[1:], true
	case strings.HasPrefix(base, "passt"):
		return conf.ModePasst, argv[1:], true
	}
	if len(argv) < 2 {
		return 0, nil, false
	}
	switch argv[1] {
	case "pasta":
		return conf.ModePasta, argv[2:], true
	case "passt":
		return conf.ModePasst, argv[2:], true
	}
	return 0, nil, false
}

func name(m conf.Mode) string {
	if m == conf.ModePasst {
		return "passt"
	}
	return "pasta"
}

func setupLog(cfg *conf.Config) error {
	switch {
	case cfg.Trace:
		log.SetLevel(log.LevelTrace)
	case cfg.Debug:
		log.SetLevel(log.LevelDebug)
	case cfg.Quiet:
		log.SetLevel(log.LevelWarn)
	}
	if cfg.LogFile != "" {
		return log.OpenFile(cfg.LogFile, cfg.LogSize)
	}
	return nil
}
