package sandbox

import (
	"fmt"
	"os/exec"
	"path"
	"path/filepath"
	"testing"
)

// UdptoolPackage is the import path of the udptool test program.
const UdptoolPackage = "github.com/gopasst/gopasst/internal/e2e/udptool"

// BuildBinary builds the Go main package pkg (an import path, or a
// directory relative to the calling test's package directory) into a
// temporary directory removed when t ends, and returns the binary's path.
// The go command must be in PATH, as it is under "go test"; the build
// cache keeps repeated builds cheap.
func BuildBinary(t testing.TB, pkg string) string {
	t.Helper()
	bin, err := Build(pkg, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// Build builds the Go main package pkg (an import path, or a directory
// relative to the working directory) into dir with "go build" and returns
// the binary's path, dir/BASE where BASE is the last element of pkg.
func Build(pkg, dir string, flags ...string) (string, error) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("sandbox: go command not found: %v", err)
	}
	bin := filepath.Join(dir, path.Base(pkg))
	args := append(append([]string{"build", "-o", bin}, flags...), pkg)
	out, err := exec.Command(goTool, args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("sandbox: go build %s: %v\n%s", pkg, err, out)
	}
	return bin, nil
}

// BuildUdptool builds udptool (see [UdptoolPackage]) with [BuildBinary]
// and returns the binary's path.
func BuildUdptool(t testing.TB) string {
	t.Helper()
	return BuildBinary(t, UdptoolPackage)
}
