package qemu

import (
	"compress/gzip"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
)

// File is one entry of an initramfs built by [BuildInitramfs].
type File struct {
	// Path is the absolute path inside the guest, such as "/bin/udptool".
	// Missing parent directories are created (mode 0755).
	Path string
	// Mode holds the permission bits (0755 for programs and scripts,
	// 0644 for data). Zero means 0644.
	Mode uint32
	// Data is the file's content. For a symbolic link it is the target.
	Data []byte
	// Symlink makes the entry a symbolic link to string(Data).
	Symlink bool
	// Dir makes the entry an (empty) directory; Mode and Data are
	// ignored.
	Dir bool
}

// Mode bits of cpio entries (as in <sys/stat.h>).
const (
	modeDir     = 0o040000
	modeRegular = 0o100000
	modeSymlink = 0o120000
	modeCharDev = 0o020000
)

// cpioEntry is one record of a "newc" cpio archive.
type cpioEntry struct {
	name         string // without leading slash
	mode         uint32
	data         []byte
	rmaj, rmin   uint32
	isDir, isDev bool
}

// writeInitramfs writes files as a gzip-compressed cpio archive in the
// "newc" format the kernel unpacks at boot. Directories are emitted before
// their contents; later files with the same path replace earlier ones.
// /dev/console is always present, so that init has a console even before
// it mounts devtmpfs.
func writeInitramfs(w io.Writer, files []File) error {
	byPath := map[string]cpioEntry{}
	dirs := map[string]bool{"dev": true}
	addDirs := func(p string) {
		for d := path.Dir(p); d != "." && d != "/" && d != ""; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	for _, f := range files {
		clean := strings.TrimPrefix(path.Clean("/"+f.Path), "/")
		if clean == "" {
			return fmt.Errorf("initramfs: bad path %q", f.Path)
		}
		if f.Dir {
			dirs[clean] = true
			addDirs(clean)
			continue
		}
		perm := f.Mode & 0o7777
		if perm == 0 {
			perm = 0o644
		}
		e := cpioEntry{name: clean, mode: modeRegular | perm, data: f.Data}
		if f.Symlink {
			e.mode = modeSymlink | 0o777
		}
		byPath[clean] = e
		addDirs(clean)
	}
	byPath["dev/console"] = cpioEntry{name: "dev/console", mode: modeCharDev | 0o600, rmaj: 5, rmin: 1, isDev: true}
	for d := range dirs {
		if _, ok := byPath[d]; ok {
			return fmt.Errorf("initramfs: %s is both a file and a directory", d)
		}
		byPath[d] = cpioEntry{name: d, mode: modeDir | 0o755, isDir: true}
	}
	names := make([]string, 0, len(byPath))
	for n := range byPath {
		names = append(names, n)
	}
	// Sorting by path puts every directory before its contents.
	sort.Strings(names)

	zw := gzip.NewWriter(w)
	cw := &cpioWriter{w: zw}
	for i, n := range names {
		cw.write(byPath[n], uint32(i+1))
	}
	cw.write(cpioEntry{name: "TRAILER!!!"}, 0)
	if cw.err != nil {
		return cw.err
	}
	return zw.Close()
}

// cpioWriter writes newc records, remembering the first error.
type cpioWriter struct {
	w   io.Writer
	off int64
	err error
}

func (c *cpioWriter) put(b []byte) {
	if c.err != nil {
		return
	}
	n, err := c.w.Write(b)
	c.off += int64(n)
	c.err = err
}

// pad writes zero bytes up to the next multiple of four.
func (c *cpioWriter) pad() {
	if r := c.off % 4; r != 0 {
		c.put(make([]byte, 4-r))
	}
}

func (c *cpioWriter) write(e cpioEntry, ino uint32) {
	nlink := uint32(1)
	if e.isDir {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		ino, e.mode, 0, 0, nlink, 0, len(e.data), 0, 0, e.rmaj, e.rmin, len(e.name)+1, 0)
	c.put([]byte(hdr))
	c.put(append([]byte(e.name), 0))
	c.pad()
	c.put(e.data)
	c.pad()
}
