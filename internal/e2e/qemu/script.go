package qemu

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Console markers printed by the init script of [InitScript], one per
// line, each followed by a space and its value where it has one.
const (
	MarkBooted    = "GUEST-BOOTED"     // uptime in seconds when /init started
	MarkMAC       = "GUEST-MAC"        // MAC address of eth0
	MarkDHCP4     = "GUEST-DHCP4"      // key=value pairs of the DHCPv4 lease
	MarkIPv4      = "GUEST-IPV4"       // address/prefix of eth0 after DHCP
	MarkGateway4  = "GUEST-GW4"        // IPv4 default gateway
	MarkMTU       = "GUEST-MTU"        // MTU of eth0 after DHCP
	MarkDHCP6     = "GUEST-DHCP6"      // JSON printed by dhcp6probe
	MarkIPv6      = "GUEST-IPV6"       // a global address/prefix of eth0 (repeated)
	MarkGateway6  = "GUEST-GW6"        // IPv6 default gateway (from the RA)
	MarkNetUp     = "GUEST-NET-UP"     // uptime when addresses are configured
	MarkPhase     = "GUEST-PHASE"      // name and uptime at the end of a setup step
	MarkSendBegin = "GUEST-SEND-BEGIN" // name; udptool send output follows
	MarkSendEnd   = "GUEST-SEND-END"   // name and exit status
	MarkReady     = "GUEST-READY"      // the guest's echo servers listen
	MarkEchoBegin = "GUEST-ECHO-BEGIN" // name; udptool echo output follows
	MarkEchoEnd   = "GUEST-ECHO-END"   // name and exit status
	MarkError     = "GUEST-ERROR"      // something went wrong in the guest
	MarkDone      = "GUEST-DONE"       // uptime just before poweroff
)

// Send is a "udptool send -echo -connect" run by the guest.
type Send struct {
	// Name identifies the result in [Report.Sends]; it must be a single
	// word.
	Name string
	// To is the destination, for example 192.0.2.1:5000 (the gateway,
	// which passt maps to the host's loopback).
	To netip.AddrPort
	// Count is the number of datagrams (default 3).
	Count int
	// Size is the payload size (default 1372).
	Size int
	// Timeout bounds the run (udptool -timeout; default 10s).
	Timeout time.Duration
	// ToRouter6 sends to the guest's IPv6 default router (the link-local
	// source address of passt's router advertisements, with zone eth0)
	// at the port of To, whose address is ignored.
	ToRouter6 bool
}

// Echo is a "udptool echo" the guest runs for traffic forwarded from the
// host (passt -u PORT).
type Echo struct {
	// Name identifies the result in [Report.Echoes]; a single word.
	Name string
	// Listen is the address to bind: 0.0.0.0:PORT or [::]:PORT.
	Listen netip.AddrPort
	// Count makes echo exit after that many datagrams (0: run until the
	// idle timeout).
	Count int
	// Timeout is the idle timeout (default 30s).
	Timeout time.Duration
}

// InitOptions configure the /init script built by [InitScript].
type InitOptions struct {
	// Sends run one after the other once the network is configured.
	Sends []Send
	// Echoes start after the sends. Once all listen, the guest prints
	// MarkReady and waits for them to exit.
	Echoes []Echo
	// NoDHCP6 skips the DHCPv6 exchange (dhcp6probe).
	NoDHCP6 bool
	// SLAACWait bounds the wait for a global IPv6 address from a router
	// advertisement (default 10s).
	SLAACWait time.Duration
	// Extra is shell code run after the echoes, before poweroff.
	Extra string
}

// InitScript returns a busybox sh script for /init that:
//
//  1. mounts /proc, /sys and /dev, loads the virtio-net modules and brings
//     eth0 up;
//  2. gets an IPv4 lease with udhcpc (applied by [UdhcpcScript]) and prints
//     it (MarkDHCP4, MarkIPv4, MarkGateway4, MarkMTU);
//  3. waits for a global IPv6 address from SLAAC, asks for one with
//     DHCPv6 (dhcp6probe; MarkDHCP6) and adds it as a /128, then prints
//     the global addresses (MarkIPv6) and the default router (MarkGateway6);
//  4. runs the sends and echoes of o, each output between markers;
//  5. prints MarkDone and powers off.
//
// [ParseConsole] reads the markers back.
func InitScript(o InitOptions) string {
	slaac := o.SLAACWait
	if slaac <= 0 {
		slaac = 10 * time.Second
	}
	var b strings.Builder
	b.WriteString(`#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
uptime_s() { cut -d' ' -f1 /proc/uptime; }
echo "GUEST-BOOTED $(uptime_s)"
trap 'echo "GUEST-DONE $(uptime_s)"; poweroff -f' EXIT
` + GuestLoadModules + `
ip link set lo up
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
if [ ! -e /sys/class/net/eth0 ]; then echo "GUEST-ERROR no eth0"; exit 1; fi
ip link set dev eth0 up
echo "GUEST-PHASE link $(uptime_s)"
echo "GUEST-MAC $(cat /sys/class/net/eth0/address)"

udhcpc -i eth0 -f -n -q -t 5 -T 2 -O mtu -O search -s ` + GuestUdhcpcScript + ` 2>&1 || echo "GUEST-ERROR udhcpc failed"
echo "GUEST-PHASE dhcp4 $(uptime_s)"
echo "GUEST-IPV4 $(ip -4 addr show dev eth0 | awk '/inet /{print $2; exit}')"
echo "GUEST-GW4 $(ip -4 route show default | awk '{print $3; exit}')"
echo "GUEST-MTU $(cat /sys/class/net/eth0/mtu)"

global6() { ip -6 addr show dev eth0 scope global | awk '/inet6/ && !/tentative/ {print $2}'; }
i=0
while [ -z "$(global6)" ] && [ $i -lt ` + strconv.Itoa(int(slaac/(100*time.Millisecond))) + ` ]; do sleep 0.1; i=$((i+1)); done
[ -n "$(global6)" ] || echo "GUEST-ERROR no IPv6 address from SLAAC"
echo "GUEST-PHASE slaac $(uptime_s)"
`)
	if !o.NoDHCP6 {
		b.WriteString(`j=$(dhcp6probe -i eth0 2>&1)
echo "GUEST-DHCP6 $j"
for a in $(echo "$j" | sed -n 's/.*"addresses":\[\([^]]*\)\].*/\1/p' | tr -d '"' | tr , ' '); do
	ip -6 addr add "$a/128" dev eth0 || echo "GUEST-ERROR cannot add $a"
	i=0
	while ip -6 addr show dev eth0 | grep "$a/128" | grep -q tentative && [ $i -lt 30 ]; do sleep 0.1; i=$((i+1)); done
done
echo "GUEST-PHASE dhcp6 $(uptime_s)"
`)
	}
	b.WriteString(`ip -6 addr show dev eth0 | grep -q dadfailed && echo "GUEST-ERROR duplicate address detection failed: $(ip -6 addr show dev eth0 | grep dadfailed)"
for a in $(global6); do echo "GUEST-IPV6 $a"; done
echo "GUEST-GW6 $(ip -6 route show default | awk '{print $3; exit}')"
echo "GUEST-NET-UP $(uptime_s)"
`)
	for _, s := range o.Sends {
		count, size, timeout := s.Count, s.Size, s.Timeout
		if count <= 0 {
			count = 3
		}
		if size <= 0 {
			size = 1372
		}
		if timeout <= 0 {
			timeout = 10 * time.Second
		}
		to := s.To.String()
		if s.ToRouter6 {
			to = fmt.Sprintf(`"[$(ip -6 route show default | awk '{print $3; exit}')%%eth0]:%d"`, s.To.Port())
		}
		fmt.Fprintf(&b, "echo \"%s %s\"\nudptool send -to %s -echo -connect -count %d -size %d -timeout %s 2>&1\necho \"%s %s $?\"\n",
			MarkSendBegin, s.Name, to, count, size, timeout, MarkSendEnd, s.Name)
	}
	if len(o.Echoes) > 0 {
		for i, e := range o.Echoes {
			timeout := e.Timeout
			if timeout <= 0 {
				timeout = 30 * time.Second
			}
			fmt.Fprintf(&b, ": > /tmp/echo%d.out\nudptool echo -l %s -count %d -timeout %s > /tmp/echo%d.out 2>&1 &\necho_pid%d=$!\n",
				i, e.Listen, e.Count, timeout, i, i)
		}
		b.WriteString("i=0\nwhile [ $i -lt 100 ]; do\n\tn=0\n")
		for i := range o.Echoes {
			fmt.Fprintf(&b, "\tgrep -qx ready /tmp/echo%d.out && n=$((n+1))\n", i)
		}
		fmt.Fprintf(&b, "\t[ $n -eq %d ] && break\n\tsleep 0.1; i=$((i+1))\ndone\n", len(o.Echoes))
		b.WriteString(`echo "` + MarkReady + ` $(uptime_s)"` + "\n")
		for i, e := range o.Echoes {
			fmt.Fprintf(&b, "wait $echo_pid%d\nrc=$?\necho \"%s %s\"\ncat /tmp/echo%d.out\necho \"%s %s $rc\"\n",
				i, MarkEchoBegin, e.Name, i, MarkEchoEnd, e.Name)
		}
	}
	if o.Extra != "" {
		b.WriteString(o.Extra)
		b.WriteString("\n")
	}
	b.WriteString("exit 0\n")
	return b.String()
}

// SendResult is the outcome of a [Send], from udptool's JSON line.
type SendResult struct {
	// Sent, Received and Bad count datagrams sent, echoes received and
	// echoes that differed from what was sent; Local and Peer are the
	// socket's addresses; Error is udptool's error, if it printed one.
	Sent     int    `json:"sent"`
	Received int    `json:"received"`
	Bad      int    `json:"bad"`
	Local    string `json:"local"`
	Peer     string `json:"peer"`
	Error    string `json:"error"`
	// Exit is udptool's exit status.
	Exit int `json:"-"`
	// Output is everything printed between the markers.
	Output string `json:"-"`
}

// EchoResult is the outcome of an [Echo], from udptool's JSON line.
type EchoResult struct {
	// Echoed counts datagrams echoed; Peers lists their distinct sources.
	Echoed int      `json:"echoed"`
	Peers  []string `json:"peers"`
	// Exit is udptool's exit status.
	Exit int `json:"-"`
	// Output is everything printed between the markers.
	Output string `json:"-"`
}

// DHCP6Result is what dhcp6probe printed.
type DHCP6Result struct {
	// Reply is the type of the answer the result comes from: "reply".
	Reply string `json:"reply"`
	// Requested reports that the server answered the Solicit with an
	// Advertise (ignoring Rapid Commit), so dhcp6probe sent a Request.
	Requested bool `json:"requested"`
	// RapidCommit reports whether the Reply carried the Rapid Commit
	// option (RFC 8415 wants it in a Reply to a Solicit).
	RapidCommit bool `json:"rapid_commit"`
	// Addresses are the IA_NA addresses, with their Preferred and Valid
	// lifetimes in seconds.
	Addresses []string `json:"addresses"`
	Preferred []uint32 `json:"preferred"`
	Valid     []uint32 `json:"valid"`
	// DNS and Search are the DNS servers and the domain search list.
	DNS    []string `json:"dns"`
	Search []string `json:"search"`
	// ServerID is the server's DUID in hex; Status a status code option
	// ("CODE message"), if any; Error says why dhcp6probe failed.
	ServerID string `json:"server_id"`
	Status   string `json:"status"`
	Error    string `json:"error"`
}

// Report is what [ParseConsole] found on the console.
type Report struct {
	// BootTime is the guest's uptime when /init started, NetUpTime when
	// the addresses were configured and DoneTime at the end (zero if
	// not seen).
	BootTime, NetUpTime, DoneTime time.Duration
	// Phases holds the guest uptime at the end of each setup step:
	// "link" (eth0 up), "dhcp4", "slaac", "dhcp6".
	Phases map[string]time.Duration
	// MAC is eth0's address.
	MAC string
	// DHCP4 holds the udhcpc lease variables (ip, mask, router, dns,
	// mtu, domain, search, lease, serverid); nil without a lease.
	DHCP4 map[string]string
	// IPv4 is eth0's IPv4 address after DHCP.
	IPv4 netip.Prefix
	// Gateway4 is the IPv4 default route's gateway.
	Gateway4 netip.Addr
	// MTU is eth0's MTU after DHCP.
	MTU int
	// DHCP6 is the DHCPv6 outcome; nil if not run.
	DHCP6 *DHCP6Result
	// IPv6 lists eth0's global IPv6 addresses (SLAAC and DHCPv6).
	IPv6 []netip.Prefix
	// Gateway6 is the IPv6 default route's gateway.
	Gateway6 netip.Addr
	// Sends and Echoes hold results by name.
	Sends  map[string]SendResult
	Echoes map[string]EchoResult
	// Ready reports whether MarkReady was printed.
	Ready bool
	// Done reports whether the script reached its end (MarkDone).
	Done bool
	// Errors lists the MarkError lines, without the marker.
	Errors []string
}

// ParseConsole extracts the markers of an [InitScript] run from the
// serial console output.
func ParseConsole(console string) *Report {
	r := &Report{Sends: map[string]SendResult{}, Echoes: map[string]EchoResult{}, Phases: map[string]time.Duration{}}
	var block []string
	inBlock := false
	for _, line := range strings.Split(strings.ReplaceAll(console, "\r", ""), "\n") {
		mark, val, _ := strings.Cut(strings.TrimSpace(line), " ")
		val = strings.TrimSpace(val)
		switch mark {
		case MarkBooted:
			r.BootTime = seconds(val)
		case MarkNetUp:
			r.NetUpTime = seconds(val)
		case MarkDone:
			r.Done = true
			r.DoneTime = seconds(val)
		case MarkPhase:
			if name, t, ok := strings.Cut(val, " "); ok {
				r.Phases[name] = seconds(t)
			}
		case MarkMAC:
			r.MAC = val
		case MarkDHCP4:
			r.DHCP4 = map[string]string{}
			for _, kv := range strings.Fields(val) {
				k, v, _ := strings.Cut(kv, "=")
				r.DHCP4[k] = v
			}
		case MarkIPv4:
			r.IPv4, _ = netip.ParsePrefix(val)
		case MarkGateway4:
			r.Gateway4, _ = netip.ParseAddr(val)
		case MarkMTU:
			r.MTU, _ = strconv.Atoi(val)
		case MarkDHCP6:
			var d DHCP6Result
			if err := json.Unmarshal([]byte(val), &d); err != nil {
				d.Error = fmt.Sprintf("unparsable output %q", val)
			}
			r.DHCP6 = &d
		case MarkIPv6:
			if p, err := netip.ParsePrefix(val); err == nil {
				r.IPv6 = append(r.IPv6, p)
			}
		case MarkGateway6:
			r.Gateway6, _ = netip.ParseAddr(val)
		case MarkReady:
			r.Ready = true
		case MarkError:
			r.Errors = append(r.Errors, val)
		case MarkSendBegin, MarkEchoBegin:
			inBlock, block = true, nil
		case MarkSendEnd, MarkEchoEnd:
			f := strings.Fields(val)
			if len(f) < 1 {
				continue
			}
			exit := -1
			if len(f) > 1 {
				exit, _ = strconv.Atoi(f[1])
			}
			out := strings.Join(block, "\n")
			js := ""
			for _, l := range block {
				if strings.HasPrefix(l, "{") {
					js = l
				}
			}
			if mark == MarkSendEnd {
				s := SendResult{Exit: exit, Output: out}
				if err := json.Unmarshal([]byte(js), &s); err != nil && s.Error == "" {
					s.Error = "no JSON result"
				}
				s.Exit, s.Output = exit, out
				r.Sends[f[0]] = s
			} else {
				e := EchoResult{}
				_ = json.Unmarshal([]byte(js), &e)
				e.Exit, e.Output = exit, out
				r.Echoes[f[0]] = e
			}
			inBlock, block = false, nil
		default:
			if inBlock {
				block = append(block, strings.TrimSpace(line))
			}
		}
	}
	return r
}

// seconds parses a /proc/uptime value.
func seconds(s string) time.Duration {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0
	}
	return time.Duration(f * float64(time.Second))
}

// HasGlobal6In reports whether one of the guest's global IPv6 addresses
// lies in p.
func (r *Report) HasGlobal6In(p netip.Prefix) bool {
	for _, a := range r.IPv6 {
		if p.Contains(a.Addr()) {
			return true
		}
	}
	return false
}
