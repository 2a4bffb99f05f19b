package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gopasst/gopasst/internal/e2e/pattern"
)

// TestPattern checks that the pattern is the same however it is cut, and
// that the verifier finds the first wrong byte.
func TestPattern(t *testing.T) {
	whole := make([]byte, 1000)
	pattern.Fill(whole, 7, 0)
	for _, cut := range []int{1, 3, 8, 13, 64, 999} {
		var got []byte
		for off := 0; off < len(whole); off += cut {
			b := make([]byte, min(cut, len(whole)-off))
			pattern.Fill(b, 7, uint64(off))
			got = append(got, b...)
		}
		if !bytes.Equal(got, whole) {
			t.Fatalf("pattern cut in pieces of %d differs", cut)
		}
	}
	other := make([]byte, len(whole))
	pattern.Fill(other, 8, 0)
	if bytes.Equal(other, whole) {
		t.Fatal("seeds 7 and 8 give the same pattern")
	}
	v := newVerifier(7)
	bad := append([]byte{}, whole...)
	bad[517] ^= 1
	v.add(bad[:500])
	v.add(bad[500:])
	if v.badAt != 517 || v.n != 1000 {
		t.Fatalf("bad byte found at %d of %d, want 517 of 1000", v.badAt, v.n)
	}
}

// serve runs "serve args" in the background and returns its address and
// a function that waits for it and returns its output and status.
func serve(t *testing.T, args ...string) (string, func() (string, int)) {
	t.Helper()
	pr, pw := io.Pipe()
	var out bytes.Buffer
	done := make(chan int, 1)
	go func() {
		code := run(append([]string{"serve", "-l", "127.0.0.1:0", "-timeout", "20s"}, args...), pw, io.Discard)
		pw.Close()
		done <- code
	}()
	sc := bufio.NewScanner(pr)
	addr := ""
	for sc.Scan() {
		line := sc.Text()
		if a, ok := strings.CutPrefix(line, "listen "); ok {
			addr = a
		}
		if line == "ready" {
			break
		}
	}
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		for sc.Scan() {
			out.WriteString(sc.Text() + "\n")
		}
		io.Copy(io.Discard, pr)
	}()
	if addr == "" {
		t.Fatal("serve printed no address")
	}
	return addr, func() (string, int) {
		code := <-done
		<-scanned
		return out.String(), code
	}
}

// result decodes the first line of out that starts with prefix.
func result(t *testing.T, out, prefix string, v any) {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, prefix) {
			if err := json.Unmarshal([]byte(l), v); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatalf("no %s line in %q", prefix, out)
}

// TestModes runs the client against each server mode on the loopback.
func TestModes(t *testing.T) {
	for _, c := range []struct {
		mode        string
		send, reply string
		peerSeed    string
	}{
		{"echo", "300000", "300000", "1"},
		{"sink", "300000", "1000", "2"},
		{"source", "0", "3000000", "2"},
		{"source", "5000", "70000", "2"},
	} {
		addr, wait := serve(t, "-mode", c.mode, "-count", "1", "-size", c.reply)
		var out bytes.Buffer
		code := run([]string{"client", "-to", addr, "-send", c.send, "-expect", c.reply, "-peer-seed", c.peerSeed}, &out, os.Stderr)
		var cr struct {
			OK             bool
			Received       int64
			SHA256Sent     string `json:"sha256_sent"`
			SHA256Received string `json:"sha256_received"`
		}
		result(t, out.String(), `{"local"`, &cr)
		sout, scode := wait()
		var sr struct {
			OK             bool
			SHA256Sent     string `json:"sha256_sent"`
			SHA256Received string `json:"sha256_received"`
		}
		result(t, sout, `{"conn"`, &sr)
		if code != 0 || scode != 0 || !cr.OK || !sr.OK || cr.SHA256Sent != sr.SHA256Received || cr.SHA256Received != sr.SHA256Sent {
			t.Errorf("%s: client %d %s\nserver %d %s", c.mode, code, out.String(), scode, sout)
		}
	}
	// A wrong seed is noticed.
	addr, wait := serve(t, "-mode", "source", "-count", "1", "-size", "100")
	var out bytes.Buffer
	if code := run([]string{"client", "-to", addr, "-expect", "100", "-peer-seed", "9"}, &out, io.Discard); code != 1 || !strings.Contains(out.String(), `"bad_at":0`) {
		t.Errorf("wrong seed: exit %d, %s", code, out.String())
	}
	wait()
}

// TestResetAndMany checks the reset and many commands on the loopback.
func TestResetAndMany(t *testing.T) {
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	var vout bytes.Buffer
	go func() {
		done <- run([]string{"reset", "-l", "127.0.0.1:0", "-role", "victim"}, io.MultiWriter(pw, &vout), io.Discard)
		pw.Close()
	}()
	sc := bufio.NewScanner(pr)
	addr := ""
	for sc.Scan() {
		if a, ok := strings.CutPrefix(sc.Text(), "listen "); ok {
			addr = a
			break
		}
	}
	go io.Copy(io.Discard, pr)
	var rout bytes.Buffer
	if code := run([]string{"reset", "-to", addr, "-role", "resetter", "-after", "100000"}, &rout, os.Stderr); code != 0 {
		t.Fatalf("resetter: %d %s", code, rout.String())
	}
	if code := <-done; code != 0 {
		t.Fatalf("victim: %d %s", code, vout.String())
	}

	addr, wait := serve(t, "-mode", "echo", "-count", "30", "-quiet")
	hold := filepath.Join(t.TempDir(), "hold")
	if err := os.WriteFile(hold, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if code := run([]string{"many", "-to", addr, "-concurrent", "10", "-sequential", "20", "-hold", hold}, &out, os.Stderr); code != 0 {
		t.Fatalf("many: %d %s", code, out.String())
	}
	if sout, code := wait(); code != 0 || !strings.Contains(sout, `"conns":30,"ok":30`) {
		t.Fatalf("server: %d %s", code, sout)
	}

	out.Reset()
	run([]string{"connect", "-to", "127.0.0.1:1"}, &out, os.Stderr)
	if !strings.Contains(out.String(), `"result":"refused"`) {
		t.Fatalf("connect to a closed port: %s", out.String())
	}
}
