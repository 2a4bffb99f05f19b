// Command userhelper is built and run by the netns tests to exercise
// EnterUserNS and JoinUserNS from an unprivileged user.
//
// Usage: userhelper enter|join=PATH report|sleep|kill EXITCODE
package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gopasst/gopasst/internal/netns"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: userhelper enter|join=PATH report|sleep|kill EXITCODE")
		os.Exit(2)
	}
	var (
		code int
		re   bool
		err  error
	)
	if path, ok := strings.CutPrefix(os.Args[1], "join="); ok {
		code, re, err = netns.JoinUserNS(path)
	} else {
		code, re, err = netns.EnterUserNS()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "userhelper:", err)
		os.Exit(125)
	}
	if re {
		os.Exit(code)
	}

	userns, _ := os.Readlink("/proc/self/ns/user")
	fd3, _ := os.Readlink("/proc/self/fd/3")
	fd4, _ := os.Readlink("/proc/self/fd/4")
	fmt.Printf("euid=%d egid=%d child=%v argv0=%s userns=%s marker=%q fd3=%s fd4=%s\n",
		os.Geteuid(), os.Getegid(), netns.InUserNSChild(), os.Args[0], userns,
		os.Getenv(netns.ReexecMarker), fd3, fd4)

	switch os.Args[2] {
	case "sleep":
		fmt.Println("ready")
		time.Sleep(60 * time.Second)
	case "kill":
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		time.Sleep(10 * time.Second)
	}
	n, _ := strconv.Atoi(os.Args[3])
	os.Exit(n)
}
