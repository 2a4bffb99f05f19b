package qemu

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// KernelEnv names an environment variable that, when set, selects the
// guest kernel image instead of the newest /boot/vmlinuz-*. Its modules
// are looked up in /lib/modules/VERSION, VERSION being the file name after
// "vmlinuz-".
const KernelEnv = "GOPASST_QEMU_KERNEL"

// GuestModules lists the kernel modules the guest needs for its network
// interface, by module name. Those built into the kernel are skipped;
// those that are modules are copied into the initramfs together with
// their dependencies. af_packet (for the DHCP client) and ipv6 are
// optional: most kernels have them built in.
var GuestModules = []string{"virtio_pci", "virtio_net", "af_packet?", "ipv6?"}

// Kernel is a kernel image the guest can boot, with its modules.
type Kernel struct {
	// Image is the path of the bzImage (/boot/vmlinuz-VERSION).
	Image string
	// Version is the kernel release, as in /lib/modules/VERSION.
	Version string
	// ModDir is /lib/modules/VERSION; empty if that does not exist, in
	// which case the kernel must have virtio-net built in.
	ModDir string
}

// FindKernel returns the kernel named by [KernelEnv] or else the newest
// /boot/vmlinuz-* that is readable.
func FindKernel() (Kernel, error) {
	var cands []string
	if env := os.Getenv(KernelEnv); env != "" {
		cands = []string{env}
	} else {
		m, _ := filepath.Glob("/boot/vmlinuz-*")
		sort.Slice(m, func(i, j int) bool { return versionLess(m[i], m[j]) })
		for i := len(m) - 1; i >= 0; i-- {
			cands = append(cands, m[i])
		}
	}
	if len(cands) == 0 {
		return Kernel{}, errors.New("no kernel image /boot/vmlinuz-* (install linux-image-cloud-amd64)")
	}
	var errs []error
	for _, img := range cands {
		f, err := os.Open(img)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		f.Close()
		k := Kernel{Image: img, Version: strings.TrimPrefix(filepath.Base(img), "vmlinuz-")}
		if d := filepath.Join("/lib/modules", k.Version); isDir(d) {
			k.ModDir = d
		}
		return k, nil
	}
	return Kernel{}, fmt.Errorf("no usable kernel image: %w", errors.Join(errs...))
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

// versionLess orders kernel image names by the numbers they contain, so
// that vmlinuz-6.10 sorts after vmlinuz-6.9.
func versionLess(a, b string) bool {
	fa, fb := splitNumbers(a), splitNumbers(b)
	for i := 0; i < len(fa) && i < len(fb); i++ {
		if fa[i] == fb[i] {
			continue
		}
		na, ea := atoiOK(fa[i])
		nb, eb := atoiOK(fb[i])
		if ea && eb {
			return na < nb
		}
		return fa[i] < fb[i]
	}
	return len(fa) < len(fb)
}

func splitNumbers(s string) []string {
	var out []string
	cur := ""
	digit := false
	for i, r := range s {
		d := r >= '0' && r <= '9'
		if i > 0 && d != digit {
			out = append(out, cur)
			cur = ""
		}
		cur += string(r)
		digit = d
	}
	return append(out, cur)
}

func atoiOK(s string) (int, bool) {
	n := 0
	for _, r := range s {
		if r < '0' || r > '9' || n > 1e8 {
			return 0, false
		}
		n = n*10 + int(r-'0')
	}
	return n, s != ""
}

// module is a loadable module with the paths (relative to ModDir) of the
// modules it depends on.
type module struct {
	path string
	deps []string
}

// modName turns a module path such as kernel/drivers/net/virtio_net.ko.xz
// into its name, virtio_net.
func modName(p string) string {
	b := path.Base(p)
	if i := strings.Index(b, ".ko"); i >= 0 {
		b = b[:i]
	}
	return strings.ReplaceAll(b, "-", "_")
}

// resolveModules returns the module files (paths relative to k.ModDir)
// needed to load names, in an order in which they can be loaded with
// insmod: every module after its dependencies. A name ending in "?" is
// optional: it is skipped when the kernel has neither it nor a built-in
// version of it.
func (k Kernel) resolveModules(names []string) ([]string, error) {
	if k.ModDir == "" {
		return nil, nil
	}
	mods := map[string]module{}
	depFile, err := os.Open(filepath.Join(k.ModDir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	defer depFile.Close()
	sc := bufio.NewScanner(depFile)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		p, deps, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		mods[modName(p)] = module{path: p, deps: strings.Fields(deps)}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	builtin := map[string]bool{}
	if b, err := os.ReadFile(filepath.Join(k.ModDir, "modules.builtin")); err == nil {
		for _, l := range strings.Fields(string(b)) {
			builtin[modName(l)] = true
		}
	}

	var order []string
	done := map[string]bool{}
	var visit func(p string, depth int) error
	visit = func(p string, depth int) error {
		if done[p] {
			return nil
		}
		if depth > 64 {
			return fmt.Errorf("module dependency loop at %s", p)
		}
		m, ok := mods[modName(p)]
		if !ok {
			return fmt.Errorf("module %s is not in modules.dep", p)
		}
		for _, d := range m.deps {
			if err := visit(d, depth+1); err != nil {
				return err
			}
		}
		done[p] = true
		order = append(order, p)
		return nil
	}
	for _, n := range names {
		optional := strings.HasSuffix(n, "?")
		n = strings.TrimSuffix(n, "?")
		m, ok := mods[n]
		switch {
		case ok:
			if err := visit(m.path, 0); err != nil {
				return nil, err
			}
		case builtin[n] || optional:
		default:
			return nil, fmt.Errorf("kernel %s has module %s neither built in nor in %s", k.Version, n, k.ModDir)
		}
	}
	return order, nil
}

// readModule returns the content of a module file, decompressed: busybox
// insmod loads plain .ko files only. gzip is handled here, xz and zstd by
// the xz and zstd commands.
func readModule(p string) ([]byte, error) {
	raw, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	switch {
	case strings.HasSuffix(p, ".ko"):
		return raw, nil
	case strings.HasSuffix(p, ".ko.gz"):
		zr, err := gzip.NewReader(bytes.NewReader(raw))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		return io.ReadAll(zr)
	case strings.HasSuffix(p, ".ko.xz"):
		return decompressWith(p, raw, "xz", "-dc")
	case strings.HasSuffix(p, ".ko.zst"):
		return decompressWith(p, raw, "zstd", "-dc")
	}
	return nil, fmt.Errorf("%s: unknown module compression", p)
}

func decompressWith(p string, raw []byte, tool string, args ...string) ([]byte, error) {
	cmd := exec.Command(tool, args...)
	cmd.Stdin = bytes.NewReader(raw)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("decompress %s with %s: %v: %s", p, tool, err, stderr.String())
	}
	return out.Bytes(), nil
}
