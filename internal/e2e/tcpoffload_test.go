package e2e_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
)

// TestTCPSegmentationOffload moves 16 MiB each way between the namespace
// and the host's loopback, both families, with a namespace MTU of 1500,
// byte-exact, and checks from gopasst's counters how the data crossed the
// tap. With offloads (the default), the namespace's kernel hands over TCP
// segments of many MSS each (TSO: the average segment gopasst wrote to a
// host socket is larger than two MSS), and gopasst hands it segmented
// frames (GSO: the payload bytes per frame written to the tap exceed two
// MSS). With --no-offload, no segment and no frame carries more than one
// MSS.
func TestTCPSegmentationOffload(t *testing.T) {
	sb := sandbox.New(t)
	for _, offload := range []bool{true, false} {
		name, args := "offload", []string{"-m", "1500"}
		if !offload {
			name, args = "no-offload", append(args, "--no-offload")
		}
		t.Run(name, func(t *testing.T) {
			n := startTCPNS(t, sb, args...)
			for _, f := range families {
				mss := 1500 - 40
				if f.gw.Is6() {
					mss = 1500 - 60
				}
				for _, mode := range []string{"sink", "source"} {
					dir := map[string]string{"sink": "ns-sends", "source": "host-sends"}[mode]
					t.Run(f.name+"/"+dir, func(t *testing.T) {
						port := nextPort()
						tr := transfer{server: hostPlace(sb), client: n.place(), listen: ap(f.loopback, port), to: ap(f.gw, port), mode: mode,
							wantPeer: netip.AddrPortFrom(f.loopback, 0)}
						bytes, units := "tcp bytes to host", "tcp segments to host"
						if mode == "sink" {
							tr.send = 16 * mib
						} else {
							tr.reply = 16 * mib
							bytes, units = "tcp bytes to tap", "tap frames out"
						}
						o := tr.run(t, n)
						if !o.ok {
							return
						}
						if o.delta[units] == 0 {
							t.Fatalf("no %q counted\n%s", units, n.diag())
						}
						per := o.delta[bytes] / o.delta[units]
						msg := fmt.Sprintf("%d %s in %d %s: %d bytes each (MSS %d)", o.delta[bytes], bytes, o.delta[units], units, per, mss)
						t.Log(msg)
						switch {
						case offload && per <= int64(2*mss):
							t.Errorf("offloads on, but %s", msg)
						case !offload && per > int64(mss):
							t.Errorf("--no-offload, but %s", msg)
						}
					})
				}
			}
		})
	}
}
