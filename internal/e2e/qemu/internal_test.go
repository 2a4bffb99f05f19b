package qemu

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// readNewc parses a newc cpio archive into name -> (mode, data).
func readNewc(t *testing.T, b []byte) map[string]cpioEntry {
	t.Helper()
	out := map[string]cpioEntry{}
	off := 0
	align := func() { off = (off + 3) &^ 3 }
	field := func(i int) int {
		v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
		if err != nil {
			t.Fatalf("bad header at %d: %v", off, err)
		}
		return int(v)
	}
	for {
		if off+110 > len(b) || string(b[off:off+6]) != "070701" {
			t.Fatalf("bad magic at %d", off)
		}
		mode, size, rmaj, rmin, nameLen := field(1), field(6), field(9), field(10), field(11)
		name := string(b[off+110 : off+110+nameLen-1])
		off += 110 + nameLen
		align()
		data := b[off : off+size]
		off += size
		align()
		if name == "TRAILER!!!" {
			break
		}
		out[name] = cpioEntry{name: name, mode: uint32(mode), data: data, rmaj: uint32(rmaj), rmin: uint32(rmin)}
	}
	if off != len(b) {
		t.Errorf("%d bytes after the trailer", len(b)-off)
	}
	return out
}

func TestWriteInitramfs(t *testing.T) {
	var buf bytes.Buffer
	err := writeInitramfs(&buf, []File{
		{Path: "/init", Mode: 0o755, Data: []byte("#!/bin/sh\n")},
		{Path: "/bin/sh", Data: []byte("/bin/busybox"), Symlink: true},
		{Path: "/a/b/c", Data: []byte("xyz")},
		{Path: "/proc", Dir: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(&buf)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	got := readNewc(t, raw)
	want := map[string]uint32{
		"init": modeRegular | 0o755, "bin": modeDir | 0o755, "bin/sh": modeSymlink | 0o777,
		"a": modeDir | 0o755, "a/b": modeDir | 0o755, "a/b/c": modeRegular | 0o644,
		"proc": modeDir | 0o755, "dev": modeDir | 0o755, "dev/console": modeCharDev | 0o600,
	}
	if len(got) != len(want) {
		t.Errorf("entries %v, want %v", got, want)
	}
	for name, mode := range want {
		if e, ok := got[name]; !ok || e.mode != mode {
			t.Errorf("%s: mode %o (present %v), want %o", name, e.mode, ok, mode)
		}
	}
	if string(got["bin/sh"].data) != "/bin/busybox" || string(got["a/b/c"].data) != "xyz" {
		t.Errorf("bad contents")
	}
	if c := got["dev/console"]; c.rmaj != 5 || c.rmin != 1 {
		t.Errorf("/dev/console is %d:%d", c.rmaj, c.rmin)
	}
	// Cross-check with GNU cpio where available.
	if _, err := exec.LookPath("cpio"); err == nil {
		cmd := exec.Command("cpio", "-it", "--quiet")
		cmd.Stdin = bytes.NewReader(raw)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("cpio -it: %v", err)
		}
		if n := len(strings.Fields(string(out))); n != len(want) {
			t.Errorf("cpio lists %d entries, want %d:\n%s", n, len(want), out)
		}
	}
	if err := writeInitramfs(io.Discard, []File{{Path: "/x", Data: nil}, {Path: "/x/y"}}); err == nil {
		t.Errorf("file and directory /x accepted")
	}
}

func TestVersionLess(t *testing.T) {
	for _, c := range []struct {
		a, b string
		less bool
	}{
		{"/boot/vmlinuz-6.1.0-9-amd64", "/boot/vmlinuz-6.1.0-10-amd64", true},
		{"/boot/vmlinuz-6.10.0", "/boot/vmlinuz-6.9.0", false},
		{"/boot/vmlinuz-6.1.0-56-amd64", "/boot/vmlinuz-6.1.0-56-cloud-amd64", true},
	} {
		if got := versionLess(c.a, c.b); got != c.less {
			t.Errorf("versionLess(%s, %s) = %v", c.a, c.b, got)
		}
	}
}

func TestResolveModules(t *testing.T) {
	dir := t.TempDir()
	dep := "kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz kernel/net/core/failover.ko.xz kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz\n" +
		"kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz\n" +
		"kernel/net/core/failover.ko.xz:\n" +
		"kernel/drivers/virtio/virtio.ko.xz: kernel/drivers/virtio/virtio_ring.ko.xz\n" +
		"kernel/drivers/virtio/virtio_ring.ko.xz:\n" +
		"kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz:\n" +
		"kernel/drivers/virtio/virtio_pci.ko.xz: kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz\n"
	if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte("kernel/net/packet/af_packet.ko\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	k := Kernel{Version: "test", ModDir: dir}
	order, err := k.resolveModules(GuestModules)
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, p := range order {
		pos[modName(p)] = i
	}
	if len(order) != 7 {
		t.Errorf("order %v, want 7 modules", order)
	}
	for _, c := range [][2]string{
		{"virtio_ring", "virtio"}, {"virtio", "virtio_pci"}, {"virtio_pci_modern_dev", "virtio_pci"},
		{"failover", "net_failover"}, {"net_failover", "virtio_net"}, {"virtio", "virtio_net"},
	} {
		if pos[c[0]] >= pos[c[1]] {
			t.Errorf("%s loaded after %s: %v", c[0], c[1], order)
		}
	}
	if _, err := k.resolveModules([]string{"nonexistent"}); err == nil {
		t.Errorf("missing module accepted")
	}
	if got, err := k.resolveModules([]string{"af_packet", "nonexistent?"}); err != nil || len(got) != 0 {
		t.Errorf("built-in and optional modules: %v, %v", got, err)
	}
}

// TestRealKernelModules resolves the guest modules of the installed
// kernel, if any, and checks busybox insmod can get them uncompressed.
func TestRealKernelModules(t *testing.T) {
	k, err := FindKernel()
	if err != nil {
		t.Skip(err)
	}
	files, err := moduleFiles(k)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if strings.HasSuffix(f.Path, ".ko") && !bytes.HasPrefix(f.Data, []byte("\x7fELF")) {
			t.Errorf("%s is not an ELF object", f.Path)
		}
	}
	t.Logf("kernel %s: %d module files", k.Image, len(files)-1)
}

func TestScriptsParse(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip(err)
	}
	script := InitScript(InitOptions{
		Sends:  []Send{{Name: "a", To: mustAddrPort("192.0.2.1:1")}, {Name: "b", To: mustAddrPort("[::]:2"), ToRouter6: true}},
		Echoes: []Echo{{Name: "c", Listen: mustAddrPort("0.0.0.0:3"), Count: 1}},
		Extra:  "true",
	})
	for name, s := range map[string]string{"init": script, "udhcpc": UdhcpcScript, "modules": loadModulesScript} {
		cmd := exec.Command(sh, "-n")
		cmd.Stdin = strings.NewReader(s)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s script: %v: %s\n%s", name, err, out, s)
		}
	}
}

func mustAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
