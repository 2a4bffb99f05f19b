package sandbox

import (
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
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("sandbox: go command not found: %v", err)
	}
	bin := filepath.Join(t.TempDir(), path.Base(pkg))
	out, err := exec.Command(goTool, "build", "-o", bin, pkg).CombinedOutput()
	if err != nil {
		t.Fatalf("sandbox: go build %s: %v\n%s", pkg, err, out)
	}
	return bin
}

// BuildUdptool builds udptool (see [UdptoolPackage]) with [BuildBinary]
// and returns the binary's path.
func BuildUdptool(t testing.TB) string {
	t.Helper()
	return BuildBinary(t, UdptoolPackage)
}
