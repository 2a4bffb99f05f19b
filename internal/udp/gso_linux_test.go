package udp

import (
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestSegBatchRuns checks how payloads are grouped into messages: runs of
// one size, a shorter last one closing the run, limits on count and
// bytes, and payloads received whole keeping their own message.
func TestSegBatchRuns(t *testing.T) {
	type msg struct{ count, size, bytes int }
	for _, c := range []struct {
		name  string
		sizes []int
		segs  []int // per payload, 0 if none
		merge bool
		want  []msg
	}{
		{"one", []int{100}, nil, true, []msg{{1, 0, 100}}},
		{"run", []int{100, 100, 100}, nil, true, []msg{{3, 100, 300}}},
		{"short last", []int{100, 100, 40}, nil, true, []msg{{3, 100, 240}}},
		{"after short", []int{100, 40, 100, 100}, nil, true, []msg{{2, 100, 140}, {2, 100, 200}}},
		{"larger breaks", []int{100, 200, 200}, nil, true, []msg{{1, 0, 100}, {2, 200, 400}}},
		{"no merge", []int{100, 100}, nil, false, []msg{{1, 0, 100}, {1, 0, 100}}},
		{"empty", []int{0, 0}, nil, true, []msg{{1, 0, 0}, {1, 0, 0}}},
		{"bytes limit", []int{30000, 30000, 30000}, nil, true, []msg{{2, 30000, 60000}, {1, 0, 30000}}},
		{"received whole", []int{100, 1000, 100}, []int{0, 300, 0}, true, []msg{{1, 0, 100}, {4, 300, 1000}, {1, 0, 100}}},
		{"seg not smaller", []int{100}, []int{100}, true, []msg{{1, 0, 100}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := newSegBatch()
			buf := make([]byte, 1<<17)
			off := 0
			for i, s := range c.sizes {
				seg := 0
				if c.segs != nil {
					seg = c.segs[i]
				}
				b.add(buf[off:off+s], seg, c.merge)
				off += s
			}
			b.finish(nil, 0)
			if b.n != len(c.want) {
				t.Fatalf("%d messages, want %d", b.n, len(c.want))
			}
			for m, w := range c.want {
				if b.count[m] != w.count || b.size[m] != w.size || b.bytes[m] != w.bytes {
					t.Errorf("message %d: count %d size %d bytes %d, want %+v", m, b.count[m], b.size[m], b.bytes[m], w)
				}
				h := &b.msgs[m].Hdr
				if (w.size > 0) != (h.Control != nil) {
					t.Errorf("message %d: control %v, want UDP_SEGMENT: %v", m, h.Control != nil, w.size > 0)
				}
				if h.Control != nil {
					c := (*unix.Cmsghdr)(unsafe.Pointer(h.Control))
					v := *(*uint16)(unsafe.Add(unsafe.Pointer(h.Control), unix.CmsgLen(0)))
					if c.Level != unix.IPPROTO_UDP || c.Type != unix.UDP_SEGMENT || int(v) != w.size {
						t.Errorf("message %d: cmsg level %d type %d value %d", m, c.Level, c.Type, v)
					}
				}
			}
		})
	}
}
