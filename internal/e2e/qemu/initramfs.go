package qemu

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"
)

// Go packages built into every initramfs, as static binaries.
const (
	// UdptoolPackage is built to /bin/udptool in the guest.
	UdptoolPackage = "github.com/gopasst/gopasst/internal/e2e/udptool"
	// DHCP6ProbePackage is built to /bin/dhcp6probe in the guest.
	DHCP6ProbePackage = "github.com/gopasst/gopasst/internal/e2e/qemu/dhcp6probe"
)

// Paths inside the guest.
const (
	// GuestModuleList is a file listing the module files to insmod, one
	// a line, in load order.
	GuestModuleList = "/etc/gp-modules"
	// GuestLoadModules is a script loading the modules of
	// GuestModuleList; it prints "GUEST-ERROR insmod ..." on failure.
	GuestLoadModules = "/bin/gp-load-modules"
	// GuestUdhcpcScript is the script busybox udhcpc runs by default to
	// apply a lease (see [UdhcpcScript]).
	GuestUdhcpcScript = "/usr/share/udhcpc/default.script"
)

// UdhcpcScript applies a DHCPv4 lease like busybox's simple.script does,
// with ip(8): address and prefix length, MTU, default route and
// resolv.conf. It prints the lease on one line, "GUEST-DHCP4 key=value
// ...", for [ParseConsole].
const UdhcpcScript = `#!/bin/sh
# udhcpc lease script: $1 is the event, the lease is in the environment.
case "$1" in
deconfig)
	ip -4 addr flush dev "$interface"
	ip link set dev "$interface" up
	;;
bound|renew)
	echo "GUEST-DHCP4 ip=$ip mask=$mask subnet=$subnet router=$router dns=$(echo $dns | tr ' ' ,) mtu=$mtu domain=$domain search=$(echo $search | tr ' ' ,) lease=$lease serverid=$serverid"
	if [ -n "$mtu" ]; then
		ip link set dev "$interface" mtu "$mtu" || echo "GUEST-ERROR cannot set MTU $mtu"
	fi
	ip -4 addr flush dev "$interface"
	ip addr add "$ip/${mask:-24}" ${broadcast:+broadcast "$broadcast"} dev "$interface"
	for r in $router; do
		ip route add default via "$r" dev "$interface" && break
	done
	: > /etc/resolv.conf
	[ -n "$domain" ] && echo "search $domain" >> /etc/resolv.conf
	for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
	;;
leasefail|nak)
	echo "GUEST-ERROR udhcpc $1 $message"
	;;
esac
exit 0
`

// loadModulesScript is installed as GuestLoadModules.
const loadModulesScript = `#!/bin/sh
while read -r m; do
	[ -n "$m" ] || continue
	insmod "/lib/modules/$m" || echo "GUEST-ERROR insmod $m failed"
done < ` + GuestModuleList + `
`

// findBusybox returns the path of a statically linked busybox.
func findBusybox() (string, error) {
	var errs []error
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		f, err := elf.Open(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		static := true
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP {
				static = false
			}
		}
		f.Close()
		if static && f.Machine == elf.EM_X86_64 {
			return p, nil
		}
		errs = append(errs, fmt.Errorf("%s is not a static x86-64 binary (install busybox-static)", p))
	}
	return "", fmt.Errorf("no static busybox: %w", errors.Join(errs...))
}

// busyboxFiles returns busybox as /bin/busybox and a symbolic link for
// each of its applets, where "busybox --list-full" places it.
func busyboxFiles() ([]File, error) {
	bb, err := findBusybox()
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		return nil, err
	}
	out, err := exec.Command(bb, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list-full: %v", bb, err)
	}
	files := []File{{Path: "/bin/busybox", Mode: 0o755, Data: data}}
	for _, l := range strings.Fields(string(out)) {
		p := "/" + strings.TrimPrefix(l, "/")
		if p == "/bin/busybox" || p == "/init" || p == "/linuxrc" {
			continue
		}
		files = append(files, File{Path: p, Data: []byte("/bin/busybox"), Symlink: true})
	}
	return files, nil
}

// buildStatic builds the Go main package pkg as a static x86-64 binary
// into dir and returns its content.
func buildStatic(dir, pkg string) ([]byte, error) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		return nil, fmt.Errorf("go command not found: %w", err)
	}
	bin := filepath.Join(dir, path.Base(pkg))
	cmd := exec.Command(goTool, "build", "-trimpath", "-ldflags=-s -w", "-o", bin, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
	}
	return os.ReadFile(bin)
}

// moduleFiles returns the modules of [GuestModules] (with dependencies,
// decompressed) under /lib/modules and the list GuestModuleList.
func moduleFiles(k Kernel) ([]File, error) {
	order, err := k.resolveModules(GuestModules)
	if err != nil {
		return nil, err
	}
	var files []File
	var list bytes.Buffer
	for _, rel := range order {
		data, err := readModule(filepath.Join(k.ModDir, rel))
		if err != nil {
			return nil, err
		}
		name := modName(rel) + ".ko"
		files = append(files, File{Path: "/lib/modules/" + name, Data: data})
		fmt.Fprintln(&list, name)
	}
	files = append(files, File{Path: GuestModuleList, Data: list.Bytes()})
	return files, nil
}

// BuildInitramfs writes a gzip-compressed cpio initramfs for kernel k into
// a temporary directory of t and returns its path. It contains:
//
//   - a static busybox as /bin/busybox, with a symbolic link per applet;
//   - the modules virtio-net needs, if they are not built into k, listed
//     in load order in GuestModuleList, and the script GuestLoadModules;
//   - /bin/udptool and /bin/dhcp6probe, built with CGO_ENABLED=0;
//   - the udhcpc lease script [UdhcpcScript] at GuestUdhcpcScript;
//   - initScript as /init (it must start with "#!/bin/sh");
//   - extra files, which may replace any of the above.
//
// It fails t if anything is missing.
func BuildInitramfs(t testing.TB, k Kernel, initScript string, extra ...File) string {
	t.Helper()
	dir := t.TempDir()
	files, err := busyboxFiles()
	if err != nil {
		t.Fatalf("qemu: %v", err)
	}
	mods, err := moduleFiles(k)
	if err != nil {
		t.Fatalf("qemu: modules: %v", err)
	}
	files = append(files, mods...)
	for bin, pkg := range map[string]string{"/bin/udptool": UdptoolPackage, "/bin/dhcp6probe": DHCP6ProbePackage} {
		data, err := buildStatic(dir, pkg)
		if err != nil {
			t.Fatalf("qemu: %v", err)
		}
		files = append(files, File{Path: bin, Mode: 0o755, Data: data})
	}
	files = append(files,
		File{Path: GuestLoadModules, Mode: 0o755, Data: []byte(loadModulesScript)},
		File{Path: GuestUdhcpcScript, Mode: 0o755, Data: []byte(UdhcpcScript)},
		File{Path: "/init", Mode: 0o755, Data: []byte(initScript)},
		File{Path: "/etc/passwd", Data: []byte("root:x:0:0:root:/:/bin/sh\n")},
		File{Path: "/etc/group", Data: []byte("root:x:0:\n")},
	)
	files = append(files, extra...)
	for _, d := range []string{"/proc", "/sys", "/tmp", "/run", "/root"} {
		files = append(files, File{Path: d, Dir: true})
	}

	p := filepath.Join(dir, "initramfs.cpio.gz")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeInitramfs(f, files); err != nil {
		f.Close()
		t.Fatalf("qemu: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}
