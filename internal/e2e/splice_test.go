package e2e_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gopasst/gopasst/internal/e2e/sandbox"
)

// TestSplice checks pasta's loopback bypass: datagrams from the host's
// loopback to a -u port reach the namespace socket to socket, from the
// namespace's own address and the client's port, remapped where asked;
// datagrams from the namespace's loopback to a -U port reach the host's
// loopback from the client's loopback address and port; replies go back
// to the sender's port; both families, byte-exact.
func TestSplice(t *testing.T) {
	sb := sandbox.New(t)
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			// In the namespace: echo servers for -u; then, once the host
			// side is ready, a client for -U.
			hostEcho := sb.Start(t, sb.HostNS, udptool, "echo", "-l", ap(f.loopback, 10030), "-count", "4", "-timeout", "20s")
			hostEcho.WaitLine(t, "ready", 20*time.Second)
			script := fmt.Sprintf("%[1]s echo -l %[2]s -count 4 -timeout 20s & %[1]s echo -l %[3]s -count 2 -timeout 20s & "+
				"%[1]s send -to %[4]s -from %[5]s -size 65000 -count 2 -echo -connect && "+
				"%[1]s send -to %[4]s -from %[5]s -size 1372 -count 2 -echo -connect; wait",
				udptool, ap(f.anyAddr, 10020), ap(f.anyAddr, 20021), ap(f.loopback, 10030), ap(f.loopback, 46000))
			p := pasta(t, sb, []string{"-u", "10020", "-u", "10021:20021", "-U", "10030"}, "sh", "-c", script)
			p.WaitLine(t, "listen "+ap(f.anyAddr, 10020), 5*time.Second)
			p.WaitLine(t, "listen "+ap(f.anyAddr, 20021), 5*time.Second)
			for _, s := range []struct {
				to, from string
				size     int
			}{
				{ap(f.loopback, 10020), ap(f.loopback, 45100), 65000},
				{ap(f.loopback, 10020), ap(f.loopback, 45100), 1},
				{ap(f.loopback, 10021), ap(f.loopback, 45101), 1372},
			} {
				out, err := sb.Command(sb.HostNS, udptool, "send", "-to", s.to, "-from", s.from, "-size", fmt.Sprint(s.size),
					"-count", "2", "-echo", "-connect").CombinedOutput()
				if err != nil {
					t.Fatalf("host -> namespace %s: %v\n%s\npasta stderr:\n%s", s.to, err, out, p.Stderr())
				}
			}
			wait(t, p, 0)
			var nsPeers []string
			for _, line := range strings.Split(p.Stdout(), "\n") {
				if strings.HasPrefix(line, `{"echoed"`) {
					nsPeers = append(nsPeers, parseEcho(t, line).Peers...)
				}
			}
			// Spliced datagrams reach the namespace's own address from
			// that address (the source the kernel picks towards it), with
			// the client's port.
			for _, w := range []string{ap(f.host, 45100), ap(f.host, 45101)} {
				if !contains(nsPeers, w) {
					t.Errorf("namespace did not see %s; saw %v", w, nsPeers)
				}
			}
			for _, line := range strings.Split(p.Stdout(), "\n") {
				if strings.HasPrefix(line, `{"sent"`) {
					if r := parseSend(t, line); r.Received != 2 || r.Peer != ap(f.loopback, 10030) {
						t.Errorf("namespace -> host (-U): %+v", r)
					}
				}
			}
			wait(t, hostEcho, 0)
			if peers := parseEcho(t, hostEcho.Stdout()).Peers; len(peers) != 1 || peers[0] != ap(f.loopback, 46000) {
				t.Errorf("host saw %v, want %s", peers, ap(f.loopback, 46000))
			}
		})
	}
}

// TestSpliceTargets checks where spliced datagrams land and what the
// namespace sees as their source: by default its own address, from its own
// address and the client's port (a server bound to its loopback only does
// not get them); with --host-lo-to-ns-lo its loopback, from the loopback
// and the client's port (a server bound to the namespace's address only
// does not get them); through the tap with --no-splice, from the gateway.
func TestSpliceTargets(t *testing.T) {
	sb := sandbox.New(t)
	type target struct {
		listen func(f family) netip.Addr
		// peer is what the server sees as the client's address, nil
		// if the datagram must not reach it.
		peer func(f family) netip.Addr
	}
	host := func(f family) netip.Addr { return f.host }
	wild := func(f family) netip.Addr { return f.anyAddr }
	loop := func(f family) netip.Addr { return f.loopback }
	gw := func(f family) netip.Addr { return f.gw }
	for _, m := range []struct {
		args    []string
		targets []target
	}{
		{nil, []target{{host, host}, {wild, host}, {loop, nil}}},
		{[]string{"--host-lo-to-ns-lo"}, []target{{loop, loop}, {wild, loop}, {host, nil}}},
		{[]string{"--no-splice"}, []target{{wild, gw}}},
	} {
		p := pasta(t, sb, append([]string{"-u", "10040"}, m.args...), "sh", "-c", "echo up; exec sleep 120")
		p.WaitLine(t, "up", 20*time.Second)
		pid := nsPID(t, p)
		for fi, f := range families {
			for i, tg := range m.targets {
				listen := tg.listen(f)
				srv := sb.Start(t, "", "nsenter", "-t", pid, "-n", udptool, "echo", "-l", ap(listen, 10040), "-count", "1", "-timeout", "5s")
				srv.WaitLine(t, "ready", 10*time.Second)
				// A client port of its own per case: no flow of an
				// earlier case is reused.
				cport := uint16(45200 + 10*fi + i)
				err := sb.Command(sb.HostNS, udptool, "send", "-to", ap(f.loopback, 10040), "-from", ap(f.loopback, cport), "-count", "1",
					"-echo", "-connect", "-wait", "500ms").Run()
				if wantOK := tg.peer != nil; (err == nil) != wantOK {
					t.Errorf("%v, server on %s: send error %v, want success %v\npasta stderr:\n%s", m.args, listen, err, wantOK, p.Stderr())
				}
				if tg.peer == nil {
					srv.Kill()
					<-srv.Done()
					continue
				}
				if code, err := srv.Wait(10 * time.Second); err != nil || code != 0 {
					t.Errorf("%v, server on %s: exit %d (%v)\n%s", m.args, listen, code, err, srv.Stderr())
					continue
				}
				if want, peers := ap(tg.peer(f), cport), parseEcho(t, srv.Stdout()).Peers; len(peers) != 1 || peers[0] != want {
					t.Errorf("%v, server on %s: namespace saw %v, want %s", m.args, listen, peers, want)
				}
			}
		}
		stopPasta(t, p, pid)
	}
}

// TestSpliceConnectedServer checks issue 12 on every spliced path (the
// host's loopback to a -u port in the namespace, and the namespace's
// loopback to a -U port on the host), both families, with and without
// --host-lo-to-ns-lo: a server that connect()s to its client after the
// first datagram, as socat UDP-LISTEN and TFTP servers do, gets all of 40
// paced datagrams and every echo reaches the client byte-exact, whether the
// server is bound to the address the datagrams arrive at or to the
// wildcard address; so do the replies of a wildcard-bound server that lets
// the kernel pick their source (a plain sendto()), and of one that replies
// from the datagram's destination address (pktinfo). Every server sees its
// client at the address pair of the path: the namespace's own address
// (its loopback with --host-lo-to-ns-lo) and the client's port, or on the
// host the namespace client's loopback address and port.
func TestSpliceConnectedServer(t *testing.T) {
	sb := sandbox.New(t)
	const count = 40
	servers := []struct {
		name     string
		wildcard bool
		flags    []string
		size     int
	}{
		{"bound-connect-first", false, []string{"-connect-first"}, 1372},
		{"wildcard-connect-first", true, []string{"-connect-first"}, 65000},
		{"wildcard-sendto", true, []string{"-no-pktinfo"}, 1},
		{"wildcard-pktinfo", true, nil, 8192},
	}
	// exchange runs send (count datagrams, each echo awaited and checked
	// byte-exact and from the address sent to) against the echo server
	// srv, and checks that srv echoed them all to the one peer want.
	exchange := func(t *testing.T, srv *sandbox.Proc, send *exec.Cmd, want string) {
		t.Helper()
		out, err := send.CombinedOutput()
		if r := parseSend(t, string(out)); err != nil || r.Sent != count || r.Received != count || r.Bad != 0 {
			t.Errorf("client: %v, %+v, want %d echoes\n%s\nserver stderr:\n%s", err, r, count, out, srv.Stderr())
		}
		code, err := srv.Wait(10 * time.Second)
		if err != nil || code != 0 {
			t.Errorf("server exit %d (%v)\nstdout:\n%s\nstderr:\n%s", code, err, srv.Stdout(), srv.Stderr())
			return
		}
		if e := parseEcho(t, srv.Stdout()); e.Echoed != count || len(e.Peers) != 1 || e.Peers[0] != want {
			t.Errorf("server echoed %d to %v, want %d to %s", e.Echoed, e.Peers, count, want)
		}
	}
	for _, hostLo := range []bool{false, true} {
		mode, args := "default", []string{}
		if hostLo {
			mode, args = "host-lo-to-ns-lo", []string{"--host-lo-to-ns-lo"}
		}
		t.Run(mode, func(t *testing.T) {
			for i := range servers {
				args = append(args, "-u", fmt.Sprint(10100+i), "-U", fmt.Sprint(10120+i))
			}
			p := pasta(t, sb, args, "sh", "-c", "echo up; exec sleep 120")
			p.WaitLine(t, "up", 20*time.Second)
			pid := nsPID(t, p)
			defer stopPasta(t, p, pid)
			inNS := func(args ...string) []string { return append([]string{"-t", pid, "-n", udptool}, args...) }
			for fi, f := range families {
				// Where datagrams from the host's loopback arrive in the
				// namespace, and from where.
				nsAddr := f.host
				if hostLo {
					nsAddr = f.loopback
				}
				for i, s := range servers {
					flags := append([]string{"-count", fmt.Sprint(count), "-timeout", "5s"}, s.flags...)
					client := []string{"-count", fmt.Sprint(count), "-size", fmt.Sprint(s.size), "-interval", "2ms",
						"-echo", "-wait", "500ms", "-timeout", "8s"}
					t.Run(f.name+"/host-to-ns/"+s.name, func(t *testing.T) {
						port, cport := uint16(10100+i), uint16(45300+10*fi+i)
						bind := nsAddr
						if s.wildcard {
							bind = f.anyAddr
						}
						srv := sb.Start(t, "", "nsenter", inNS(append([]string{"echo", "-l", ap(bind, port)}, flags...)...)...)
						srv.WaitLine(t, "ready", 10*time.Second)
						send := sb.Command(sb.HostNS, udptool, append([]string{"send", "-to", ap(f.loopback, port), "-from", ap(f.loopback, cport)}, client...)...)
						exchange(t, srv, send, ap(nsAddr, cport))
					})
					t.Run(f.name+"/ns-to-host/"+s.name, func(t *testing.T) {
						port, cport := uint16(10120+i), uint16(45400+10*fi+i)
						bind := f.loopback
						if s.wildcard {
							bind = f.anyAddr
						}
						srv := sb.Start(t, sb.HostNS, udptool, append([]string{"echo", "-l", ap(bind, port)}, flags...)...)
						srv.WaitLine(t, "ready", 10*time.Second)
						send := sb.Command("", "nsenter", inNS(append([]string{"send", "-to", ap(f.loopback, port), "-from", ap(f.loopback, cport)}, client...)...)...)
						exchange(t, srv, send, ap(f.loopback, cport))
					})
				}
			}
		})
	}
}

// stopPasta ends the command pasta p runs (pid, from nsPID), so that p
// exits, and fails t if p reported a data race.
func stopPasta(t *testing.T, p *sandbox.Proc, pid string) {
	t.Helper()
	if n, err := strconv.Atoi(pid); err == nil {
		_ = syscall.Kill(n, syscall.SIGTERM)
	}
	if _, err := p.Wait(10 * time.Second); err != nil {
		t.Errorf("pasta: %v\n%s", err, p.Stderr())
	}
	if strings.Contains(p.Stderr(), "WARNING: DATA RACE") {
		t.Errorf("data race in gopasst:\n%s", p.Stderr())
	}
}

// nsPID returns the pid of the command pasta p runs, checking that it is
// in a network namespace of its own (not the sandbox host's), for nsenter.
func nsPID(t *testing.T, p *sandbox.Proc) string {
	t.Helper()
	pid := childPID(t, p)
	ns, err := os.Readlink("/proc/" + pid + "/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	host, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", p.Cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	if ns == host {
		t.Fatalf("pasta's child %s is in the host's network namespace %s", pid, ns)
	}
	return pid
}

// TestSpliceSocatTransfer sends 10 MiB of random bytes, paced (8 KiB
// datagrams about a millisecond apart) so that none is lost on a loaded
// machine, from socat to socat UDP-LISTEN, which connect()s to its client
// after the first datagram: from the host's loopback to a -u port in the
// namespace (with and without --host-lo-to-ns-lo) and from the namespace's
// loopback to a -U port on the host, both families. The sender ends with a
// zero-length datagram (shut-null), the receiver takes it as the end
// (null-eof), and the received file must be the sent one byte for byte.
func TestSpliceSocatTransfer(t *testing.T) {
	if _, err := exec.LookPath("socat"); err != nil {
		t.Skip("socat is not installed (apt-get install socat): it is the UDP-LISTEN server this test needs")
	}
	sb := sandbox.New(t)
	dir := t.TempDir()
	data := make([]byte, 10<<20)
	rand.Read(data)
	sent := filepath.Join(dir, "sent")
	if err := os.WriteFile(sent, data, 0o644); err != nil {
		t.Fatal(err)
	}
	const (
		chunk = 8192
		pace  = time.Millisecond
	)
	// side says where a program runs: ns is the sandbox namespace for
	// sb.Command, wrap turns a command line into one that runs there.
	type side struct {
		ns   string
		wrap func(args ...string) []string
	}
	// transfer runs the receiver (socat UDP-LISTEN writing to a file) on
	// rs, then the sender on ss, fed data in paced chunks, and compares
	// the file with data.
	transfer := func(t *testing.T, rs, ss side, listen, connect string) {
		out := filepath.Join(dir, strings.ReplaceAll(t.Name(), "/", "_"))
		// -T: give up 3 s after the last datagram if the zero-length
		// one does not arrive. The sh wrapper puts socat's log (-d -d)
		// on stdout, where "listening on" says it is ready.
		script := fmt.Sprintf("exec socat -d -d -u -T 3 -b 65536 %s,null-eof,rcvbuf=4194304 OPEN:%s,creat,trunc 2>&1", listen, out)
		recvArgs := rs.wrap("sh", "-c", script)
		recv := sb.Start(t, rs.ns, recvArgs[0], recvArgs[1:]...)
		recv.WaitLine(t, "listening on", 10*time.Second)
		sendArgs := ss.wrap("socat", "-u", "-b", fmt.Sprint(chunk), "-", connect+",shut-null")
		send := sb.Command(ss.ns, sendArgs[0], sendArgs[1:]...)
		stdin, err := send.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		var sendOut bytes.Buffer
		send.Stdout, send.Stderr = &sendOut, &sendOut
		start := time.Now()
		if err := send.Start(); err != nil {
			t.Fatal(err)
		}
		for off := 0; off < len(data); off += chunk {
			if _, err := stdin.Write(data[off:min(off+chunk, len(data))]); err != nil {
				t.Fatalf("write to socat: %v", err)
			}
			time.Sleep(pace)
		}
		stdin.Close()
		if err := send.Wait(); err != nil {
			t.Fatalf("sender socat: %v\n%s", err, sendOut.String())
		}
		sendTime := time.Since(start)
		code, err := recv.Wait(15 * time.Second)
		log := recv.Stdout()
		if err != nil || code != 0 {
			t.Fatalf("receiver socat exit %d (%v)\n%s", code, err, log)
		}
		if !strings.Contains(log, "is at EOF") {
			t.Errorf("the receiver did not end on the zero-length datagram (null-eof), but by its inactivity timeout\n%s", log)
		}
		got, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if sha256.Sum256(got) != sha256.Sum256(data) {
			t.Fatalf("received %d bytes (sha256 %x), sent %d (sha256 %x)", len(got), sha256.Sum256(got), len(data), sha256.Sum256(data))
		}
		t.Logf("%d bytes byte-exact in %v", len(got), sendTime.Round(time.Millisecond))
		os.Remove(out)
	}
	for _, hostLo := range []bool{false, true} {
		mode, args := "default", []string{"-u", "10140", "-U", "10141"}
		if hostLo {
			mode, args = "host-lo-to-ns-lo", append(args, "--host-lo-to-ns-lo")
		}
		t.Run(mode, func(t *testing.T) {
			p := pasta(t, sb, args, "sh", "-c", "echo up; exec sleep 120")
			p.WaitLine(t, "up", 20*time.Second)
			pid := nsPID(t, p)
			defer stopPasta(t, p, pid)
			ns := side{"", func(args ...string) []string { return append([]string{"nsenter", "-t", pid, "-n"}, args...) }}
			host := side{sb.HostNS, func(args ...string) []string { return args }}
			for _, f := range families {
				v := "4"
				if f.loopback.Is6() {
					v = "6"
				}
				t.Run(f.name+"/host-to-ns", func(t *testing.T) {
					transfer(t, ns, host, "UDP"+v+"-LISTEN:10140", "UDP"+v+":"+ap(f.loopback, 10140))
				})
				if !hostLo {
					t.Run(f.name+"/ns-to-host", func(t *testing.T) {
						transfer(t, host, ns, "UDP"+v+"-LISTEN:10141", "UDP"+v+":"+ap(f.loopback, 10141))
					})
				}
			}
		})
	}
}
