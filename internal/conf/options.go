package conf

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// flag returns an apply function setting a boolean field.
func flag(field func(*Config) *bool) func(*parser, string) error {
	return func(p *parser, _ string) error {
		*field(p.cfg) = true
		return nil
	}
}

// portOption returns the apply function of -t, -u, -T and -U: the
// specification is only recorded here, see parser.parsePorts.
func portOption(letter byte) func(*parser, string) error {
	return func(p *parser, v string) error {
		p.ports = append(p.ports, portOpt{opt: letter, spec: v})
		return nil
	}
}

// optionTable lists every option, in the order of the help text.
var optionTable []*option

func init() {
	optionTable = []*option{
		// Logging and process behaviour.
		{long: []string{"debug"}, short: 'd', modes: inBoth,
			help: "Be verbose",
			apply: func(p *parser, _ string) error {
				p.cfg.Debug, p.cfg.Quiet = true, false
				return nil
			}},
		{long: []string{"trace"}, modes: inBoth,
			help: "Be extra verbose, implies --debug",
			apply: func(p *parser, _ string) error {
				p.cfg.Trace, p.cfg.Debug, p.cfg.Quiet = true, true, false
				return nil
			}},
		{long: []string{"stats"}, hasArg: true, modes: inBoth, arg: "DELAY",
			help: "Display event statistics, at most every DELAY seconds\nneeds --foreground",
			apply: func(p *parser, v string) error {
				n, err := parseCUint(v, math.MaxInt32)
				if err != nil {
					return err
				}
				p.cfg.Stats = int(n)
				return nil
			}},
		{long: []string{"quiet"}, short: 'q', modes: inBoth,
			help: "Don't print informational messages",
			apply: func(p *parser, _ string) error {
				p.cfg.Quiet, p.cfg.Debug, p.cfg.Trace = true, false, false
				return nil
			}},
		{long: []string{"foreground"}, short: 'f', modes: inBoth,
			help:  "Don't run in background\ndefault: run in background",
			apply: flag(func(c *Config) *bool { return &c.Foreground })},
		{long: []string{"stderr"}, short: 'e', modes: inBoth,
			help: "Deprecated, no effect",
			apply: func(p *parser, _ string) error {
				p.cfg.Warnings = append(p.cfg.Warnings, "--stderr has no effect and will be dropped soon")
				return nil
			}},
		{long: []string{"log-file"}, short: 'l', hasArg: true, modes: inBoth, arg: "PATH",
			help: "Log (only) to the given file",
			apply: func(p *parser, v string) error {
				if err := checkPath(v, maxPath); err != nil {
					return err
				}
				p.cfg.LogFile = v
				return nil
			}},
		{long: []string{"log-size"}, hasArg: true, modes: inBoth, arg: "BYTES",
			help: "Maximum size of the log file\ndefault: 1 MiB",
			apply: func(p *parser, v string) error {
				n, err := parseCUint(v, math.MaxInt64)
				if err != nil {
					return err
				}
				if n < MinLogSize {
					return fmt.Errorf("smaller than the minimum of %d bytes", MinLogSize)
				}
				p.cfg.LogSize = int64(n)
				return nil
			}},
		{long: []string{"udp-timeout"}, hasArg: true, modes: inBoth, arg: "SECONDS",
			help: "gopasst: expire idle UDP flows after SECONDS\ndefault: host's conntrack timeouts (30 s, 120 s)",
			apply: func(p *parser, v string) error {
				n, err := parseCUint(v, 86400)
				if err != nil {
					return err
				}
				if n == 0 {
					return errors.New("must be at least 1")
				}
				p.cfg.UDPTimeout = time.Duration(n) * time.Second
				return nil
			}},
		{long: []string{"max-flows"}, hasArg: true, modes: inBoth, arg: "N",
			help: "gopasst: keep at most N flows\ndefault: 65536",
			apply: func(p *parser, v string) error {
				n, err := parseCUint(v, 1<<24)
				if err != nil {
					return err
				}
				if n == 0 {
					return errors.New("must be at least 1")
				}
				p.cfg.MaxFlows = int(n)
				return nil
			}},
		{long: []string{"runas"}, hasArg: true, modes: inBoth, arg: "UID|UID:GID",
			help: "Run as the given user and group, numeric or by name\ndefault: drop to user \"nobody\" if started as root",
			apply: func(p *parser, v string) error {
				if v == "" || strings.HasPrefix(v, ":") || strings.HasSuffix(v, ":") {
					return errors.New("expected UID, UID:GID, LOGIN or LOGIN:GROUP")
				}
				p.cfg.RunAs = v
				return nil
			}},
		{long: []string{"no-sandbox"}, modes: inBoth,
			help:  "gopasst: don't sandbox after set-up (for debugging)",
			apply: flag(func(c *Config) *bool { return &c.NoSandbox })},
		{long: []string{"conf-path"}, short: 'c', hasArg: true, modes: inBoth, arg: "PATH",
			help: "Control socket path, for pesto(1) and \"gopasst ctl\":\nlist, add and delete forwarding rules at run time,\nlist flows, show counters; mode 0600, only the user\nwho started gopasst may connect; removed at exit",
			apply: func(p *parser, v string) error {
				if err := checkPath(v, maxSockPath); err != nil {
					return err
				}
				p.cfg.ConfPath = v
				return nil
			}},
		{long: []string{"help"}, short: 'h', modes: inBoth,
			help:  "Display this help message and exit",
			apply: func(*parser, string) error { return ErrHelp }},
		{long: []string{"version"}, modes: inBoth,
			help:  "Show version and exit",
			apply: func(*parser, string) error { return ErrVersion }},

		// Mode specific connection to the guest or namespace.
		{long: []string{"ns-ifname"}, short: 'I', hasArg: true, modes: inPasta, arg: "NAME",
			help: "Namespace interface name\ndefault: same as the external interface",
			apply: func(p *parser, v string) error {
				if err := checkIfname(v); err != nil {
					return err
				}
				p.cfg.NSIfname = v
				return nil
			}},
		{long: []string{"socket", "socket-path"}, short: 's', hasArg: true, modes: inPasst, arg: "PATH",
			help: "UNIX domain socket path\ndefault: probe a free path from /tmp/passt_1.socket",
			apply: func(p *parser, v string) error {
				if err := checkPath(v, maxSockPath); err != nil {
					return err
				}
				p.cfg.Socket, p.cfg.FD = v, -1
				return nil
			}},
		{long: []string{"vhost-user"}, modes: inPasst,
			help:  "Enable vhost-user mode, on the socket given by -s",
			apply: flag(func(c *Config) *bool { return &c.VhostUser })},
		{long: []string{"print-capabilities"}, modes: inPasst,
			help:  "Print back-end capabilities in JSON format and exit\n(vhost-user)",
			apply: flag(func(c *Config) *bool { return &c.PrintCapabilities })},
		{long: []string{"repair-path"}, hasArg: true, modes: inPasst, arg: "PATH",
			help: "Socket path for passt-repair(1), \"none\" to disable\n(vhost-user)\ndefault: socket path (-s) with \".repair\" appended",
			apply: func(p *parser, v string) error {
				if err := checkPath(v, maxSockPath); err != nil {
					return err
				}
				p.cfg.RepairPath = v
				return nil
			}},
		{long: []string{"migrate-exit"}, modes: inPasst,
			help: "Deprecated: source quits after migration (vhost-user)",
			apply: func(p *parser, _ string) error {
				p.cfg.MigrateExit = true
				p.cfg.Warnings = append(p.cfg.Warnings, "--migrate-exit is deprecated")
				return nil
			}},
		{long: []string{"migrate-no-linger"}, modes: inPasst,
			help: "Deprecated: close sockets on migration (vhost-user)",
			apply: func(p *parser, _ string) error {
				p.cfg.MigrateNoLinger = true
				p.cfg.Warnings = append(p.cfg.Warnings, "--migrate-no-linger is deprecated")
				return nil
			}},
		{long: []string{"fd"}, short: 'F', hasArg: true, modes: inPasst, arg: "FD",
			help: "Use FD as pre-opened connected socket\nimplies --one-off",
			apply: func(p *parser, v string) error {
				n, err := parseCUint(v, math.MaxInt32)
				if err != nil {
					return err
				}
				p.cfg.FD, p.cfg.Socket, p.cfg.OneOff = int(n), "", true
				return nil
			}},
		{long: []string{"pcap"}, short: 'p', hasArg: true, modes: inBoth, arg: "FILE",
			help: "Capture tap-facing traffic to a pcap file",
			apply: func(p *parser, v string) error {
				if err := checkPath(v, maxPath); err != nil {
					return err
				}
				p.cfg.PcapFile = v
				return nil
			}},
		{long: []string{"pid"}, short: 'P', hasArg: true, modes: inBoth, arg: "FILE",
			help: "Write own PID to the given file",
			apply: func(p *parser, v string) error {
				if err := checkPath(v, maxPath); err != nil {
					return err
				}
				p.cfg.PIDFile = v
				return nil
			}},

		// Addresses and routes.
		{long: []string{"mtu"}, short: 'm', hasArg: true, modes: inBoth, arg: "MTU",
			help: "Assign MTU via DHCP/NDP, 0 to not assign any\ndefault: 65520, the largest 802.3 MTU less the\nheader, 32-bit aligned",
			apply: func(p *parser, v string) error {
				n, err := parseCUint(v, math.MaxUint32)
				if err != nil {
					return err
				}
				if n > MaxMTU {
					return fmt.Errorf("MTU too large (maximum %d)", MaxMTU)
				}
				p.cfg.MTU, p.cfg.MTUSet = int(n), true
				return nil
			}},
		{long: []string{"address"}, short: 'a', hasArg: true, modes: inBoth, arg: "ADDR",
			help:  "Assign IPv4 or IPv6 address ADDR[/PREFIXLEN]\nonce per address family\ndefault: from the interface with the default route",
			apply: (*parser).address},
		{long: []string{"netmask"}, short: 'n', hasArg: true, modes: inBoth, arg: "MASK",
			help:  "Assign IPv4 netmask, dotted decimal or prefix length\ndefault: from the matching host address",
			apply: (*parser).netmask},
		{long: []string{"mac-addr"}, short: 'M', hasArg: true, modes: inBoth, arg: "ADDR",
			help: "Use source MAC address ADDR\ndefault: 9a:55:9a:55:9a:55 (locally administered)",
			apply: func(p *parser, v string) error {
				mac, err := parseMAC(v)
				p.cfg.MAC = mac
				return err
			}},
		{long: []string{"gateway"}, short: 'g', hasArg: true, modes: inBoth, arg: "ADDR",
			help: "Pass IPv4 or IPv6 address as gateway, once per family\ndefault: from the interface with the default route",
			apply: func(p *parser, v string) error {
				a, err := parseAddr(v)
				switch {
				case err != nil:
					return err
				case a.IsUnspecified() || a.IsLoopback() || a == broadcast4:
					return errors.New("not a valid gateway address")
				case a.Is4():
					p.cfg.Gateway4 = a
				default:
					p.cfg.Gateway6 = a
				}
				return nil
			}},
		{long: []string{"interface"}, short: 'i', hasArg: true, modes: inBoth, arg: "NAME",
			help: "Interface to take addresses and routes from\ndefault: from --outbound-if4/6, else the first\ninterface with a default route",
			apply: func(p *parser, v string) error {
				if err := checkIfname(v); err != nil {
					return err
				}
				p.cfg.Interface = v
				return nil
			}},
		{long: []string{"outbound"}, short: 'o', hasArg: true, modes: inBoth, arg: "ADDR",
			help: "Bind outbound sockets to this source address\nonce per address family\ndefault: source address from the routing tables",
			apply: func(p *parser, v string) error {
				a, err := parseAddr(v)
				switch {
				case err != nil:
					return err
				case a.IsUnspecified() || a.IsMulticast() || a == broadcast4:
					return errors.New("not a valid outbound address")
				case a.Is4():
					p.cfg.Outbound4 = a
				case a.IsLoopback() || a.Is4In6() || isV4Compat(a):
					return errors.New("not a valid outbound address")
				default:
					p.cfg.Outbound6 = a
				}
				return nil
			}},
		{long: []string{"outbound-if4"}, hasArg: true, modes: inBoth, arg: "NAME",
			help: "Bind IPv4 outbound sockets to this interface\ndefault: interface of the default route",
			apply: func(p *parser, v string) error {
				if err := checkIfname(v); err != nil {
					return err
				}
				p.cfg.OutboundIf4 = v
				return nil
			}},
		{long: []string{"outbound-if6"}, hasArg: true, modes: inBoth, arg: "NAME",
			help: "Bind IPv6 outbound sockets to this interface\ndefault: interface of the default route",
			apply: func(p *parser, v string) error {
				if err := checkIfname(v); err != nil {
					return err
				}
				p.cfg.OutboundIf6 = v
				return nil
			}},

		// DNS.
		{long: []string{"dns"}, short: 'D', hasArg: true, modes: inBoth, arg: "ADDR",
			help:  "Use IPv4 or IPv6 address as DNS resolver, repeatable\n\"none\" disables DNS information",
			apply: (*parser).dns},
		{long: []string{"search"}, short: 'S', hasArg: true, modes: inBoth, arg: "LIST",
			help:  "Space-separated list of search domains, repeatable\n\"none\" disables the search list",
			apply: (*parser).search},
		{long: []string{"hostname"}, short: 'H', hasArg: true, modes: inBoth, arg: "NAME",
			help: "Hostname to configure the client with",
			apply: func(p *parser, v string) error {
				if err := checkDomain(v); err != nil {
					return err
				}
				p.cfg.Hostname = v
				return nil
			}},
		{long: []string{"fqdn"}, hasArg: true, modes: inBoth, arg: "NAME",
			help: "FQDN to configure the client with",
			apply: func(p *parser, v string) error {
				if err := checkDomain(v); err != nil {
					return err
				}
				p.cfg.FQDN = v
				return nil
			}},
		{long: []string{"dhcp-dns"}, modes: inPasta,
			help:  "Pass the DNS list via DHCP/DHCPv6/NDP\ndefault: don't",
			apply: flag(func(c *Config) *bool { return &c.DHCPDNS })},
		{long: []string{"no-dhcp-dns"}, modes: inPasst,
			help:  "No DNS list in DHCP/DHCPv6/NDP",
			apply: flag(func(c *Config) *bool { return &c.NoDHCPDNS })},
		{long: []string{"dhcp-search"}, modes: inPasta,
			help:  "Pass the search list via DHCP/DHCPv6/NDP\ndefault: don't",
			apply: flag(func(c *Config) *bool { return &c.DHCPSearch })},
		{long: []string{"no-dhcp-search"}, modes: inPasst,
			help:  "No search list in DHCP/DHCPv6/NDP",
			apply: flag(func(c *Config) *bool { return &c.NoDHCPSearch })},
		{long: []string{"map-host-loopback"}, hasArg: true, modes: inBoth, arg: "ADDR",
			help: "Translate ADDR to refer to the host, once per family\n\"none\" maps nothing, implies --no-map-gw\ndefault: gateway address",
			apply: func(p *parser, v string) error {
				if v == "none" {
					p.cfg.MapHostLoopback4, p.cfg.MapHostLoopback6 = netip.Addr{}, netip.Addr{}
					p.cfg.NoMapGW = true
					return nil
				}
				return setByFamily(v, validNAT, &p.cfg.MapHostLoopback4, &p.cfg.MapHostLoopback6)
			}},
		{long: []string{"map-guest-addr"}, hasArg: true, modes: inBoth, arg: "ADDR",
			help: "Translate ADDR to the guest's address, once per family\ndefault: none",
			apply: func(p *parser, v string) error {
				if v == "none" {
					p.cfg.MapGuestAddr4, p.cfg.MapGuestAddr6 = netip.Addr{}, netip.Addr{}
					return nil
				}
				return setByFamily(v, validNAT, &p.cfg.MapGuestAddr4, &p.cfg.MapGuestAddr6)
			}},
		{long: []string{"dns-forward"}, hasArg: true, modes: inBoth, arg: "ADDR",
			help: "Forward DNS queries sent to ADDR, once per family\ndefault: don't forward DNS queries",
			apply: func(p *parser, v string) error {
				return setByFamily(v, func(a netip.Addr) bool {
					return !a.IsUnspecified() && !a.IsLoopback() && a != broadcast4
				}, &p.cfg.DNSForward4, &p.cfg.DNSForward6)
			}},
		{long: []string{"dns-host"}, hasArg: true, modes: inBoth, arg: "ADDR",
			help: "Host nameserver to direct forwarded queries to\nonce per family\ndefault: first nameserver from /etc/resolv.conf",
			apply: func(p *parser, v string) error {
				return setByFamily(v, func(a netip.Addr) bool {
					return !a.IsUnspecified() && a != broadcast4
				}, &p.cfg.DNSHost4, &p.cfg.DNSHost6)
			}},

		// Protocol handlers and services.
		{long: []string{"no-tcp"}, modes: inBoth, help: "Disable TCP protocol handler",
			apply: flag(func(c *Config) *bool { return &c.NoTCP })},
		{long: []string{"no-udp"}, modes: inBoth, help: "Disable UDP protocol handler",
			apply: flag(func(c *Config) *bool { return &c.NoUDP })},
		{long: []string{"no-icmp"}, modes: inBoth, help: "Disable ICMP/ICMPv6 protocol handler, implies --no-ndp",
			apply: flag(func(c *Config) *bool { return &c.NoICMP })},
		{long: []string{"no-dhcp"}, modes: inBoth, help: "Disable DHCP server",
			apply: flag(func(c *Config) *bool { return &c.NoDHCP })},
		{long: []string{"no-ndp"}, modes: inBoth, help: "Disable NDP responses",
			apply: flag(func(c *Config) *bool { return &c.NoNDP })},
		{long: []string{"no-dhcpv6"}, modes: inBoth, help: "Disable DHCPv6 server",
			apply: flag(func(c *Config) *bool { return &c.NoDHCPv6 })},
		{long: []string{"no-ra"}, modes: inBoth, help: "Disable router advertisements",
			apply: flag(func(c *Config) *bool { return &c.NoRA })},
		{long: []string{"freebind"}, modes: inBoth, help: "Bind to any address for forwarding",
			apply: flag(func(c *Config) *bool { return &c.Freebind })},
		{long: []string{"no-map-gw"}, modes: inBoth, help: "Don't map the gateway address to the host",
			apply: flag(func(c *Config) *bool { return &c.NoMapGW })},
		{long: []string{"chroot-fallback"}, modes: inBoth, help: "Use chroot() if pivot_root() fails",
			apply: flag(func(c *Config) *bool { return &c.ChrootFallback })},
		{long: []string{"ipv4-only"}, short: '4', modes: inBoth, help: "Enable IPv4 operation only",
			apply: func(p *parser, _ string) error {
				p.cfg.IPv4Only, p.cfg.IPv6Only = true, false
				return nil
			}},
		{long: []string{"ipv6-only"}, short: '6', modes: inBoth, help: "Enable IPv6 operation only",
			apply: func(p *parser, _ string) error {
				p.cfg.IPv6Only, p.cfg.IPv4Only = true, false
				return nil
			}},

		// Port forwarding.
		{long: []string{"tcp-ports"}, short: 't', hasArg: true, modes: inBoth, arg: "SPEC",
			help:  "TCP port forwarding to %GUEST%, repeatable, SPEC is:\n" + specHelp,
			apply: portOption('t')},
		{long: []string{"udp-ports"}, short: 'u', hasArg: true, modes: inBoth, arg: "SPEC",
			help:  "UDP port forwarding to %GUEST%, SPEC as for -t\ndefault: %FWD%",
			apply: portOption('u')},
		{long: []string{"one-off"}, short: '1', modes: inPasst,
			help:  "Quit after handling one single client",
			apply: flag(func(c *Config) *bool { return &c.OneOff })},
		{long: []string{"tcp-ns"}, short: 'T', hasArg: true, modes: inPasta, arg: "SPEC",
			help:  "TCP port forwarding to the init namespace\nSPEC as for -t, without listening address\ndefault: auto",
			apply: portOption('T')},
		{long: []string{"udp-ns"}, short: 'U', hasArg: true, modes: inPasta, arg: "SPEC",
			help:  "UDP port forwarding to the init namespace\nSPEC as for -t, without listening address\ndefault: auto",
			apply: portOption('U')},

		// Namespaces (pasta).
		{long: []string{"host-lo-to-ns-lo"}, modes: inPasta,
			help:  "Deliver host loopback forwards to namespace loopback",
			apply: flag(func(c *Config) *bool { return &c.HostLoToNSLo })},
		{long: []string{"userns"}, hasArg: true, modes: inPasta, arg: "NSPATH",
			help: "Target user namespace to join",
			apply: func(p *parser, v string) error {
				if err := checkPath(v, maxPath); err != nil {
					return err
				}
				p.cfg.Userns, p.cfg.NetnsOnly = v, false
				return nil
			}},
		{long: []string{"netns"}, hasArg: true, modes: inPasta, arg: "PATH|NAME",
			help: "Target network namespace to join; a NAME is looked\nfor in " + NetnsRunDir,
			apply: func(p *parser, v string) error {
				path := v
				if !strings.Contains(v, "/") {
					if v == "" || v == "." || v == ".." {
						return errors.New("invalid namespace name")
					}
					path = NetnsRunDir + "/" + v
				}
				if err := checkPath(path, maxPath); err != nil {
					return err
				}
				p.cfg.Netns = path
				return nil
			}},
		{long: []string{"netns-only"}, modes: inPasta,
			help: "Don't join or create a user namespace\nimplied by --netns without --userns",
			apply: func(p *parser, _ string) error {
				p.cfg.NetnsOnly, p.cfg.Userns = true, ""
				return nil
			}},
		{long: []string{"no-netns-quit"}, modes: inPasta,
			help:  "Don't quit if the target namespace goes away",
			apply: flag(func(c *Config) *bool { return &c.NoNetnsQuit })},
		{long: []string{"config-net"}, modes: inPasta,
			help:  "Configure the tap interface in the namespace",
			apply: flag(func(c *Config) *bool { return &c.ConfigNet })},
		{long: []string{"no-copy-routes"}, modes: inPasta,
			help: "Deprecated: don't copy all routes to the namespace",
			apply: func(p *parser, _ string) error {
				p.cfg.NoCopyRoutes = true
				p.cfg.Warnings = append(p.cfg.Warnings, "--no-copy-routes will be dropped soon")
				return nil
			}},
		{long: []string{"no-copy-addrs"}, modes: inPasta,
			help: "Deprecated: don't copy all addresses to the namespace",
			apply: func(p *parser, _ string) error {
				p.cfg.NoCopyAddrs = true
				p.cfg.Warnings = append(p.cfg.Warnings, "--no-copy-addrs will be dropped soon")
				return nil
			}},
		{long: []string{"ns-mac-addr"}, hasArg: true, modes: inPasta, arg: "ADDR",
			help: "Set MAC address on the namespace tap interface",
			apply: func(p *parser, v string) error {
				mac, err := parseMAC(v)
				p.cfg.NSMAC = mac
				return err
			}},
		{long: []string{"no-offload"}, modes: inBoth,
			help:  "gopasst: no UDP segmentation offloads",
			apply: flag(func(c *Config) *bool { return &c.NoOffload })},
		{long: []string{"no-splice"}, modes: inPasta,
			help:  "Disable inbound socket splicing",
			apply: flag(func(c *Config) *bool { return &c.NoSplice })},
		{long: []string{"splice-only"}, modes: inPasta,
			help:  "Only forward loopback traffic, no tap device",
			apply: flag(func(c *Config) *bool { return &c.SpliceOnly })},
	}
}

// specHelp describes port specifications in the help text.
const specHelp = `'none': don't forward any ports, or
[ADDR[%IFACE]/]PORTS, PORTS a comma-separated list:
  FIRST[-LAST][:[TOADDR/]TOFIRST[-TOLAST]]
  FIRST[-LAST]:TOADDR
  ~FIRST[-LAST]  exclude (exclusions only: all
                 unbound non-ephemeral ports but)%ALL%%AUTO%
Examples:
  -t 22          port 22 to 22 on %GUEST%
  -t 22:23       port 22 to 23
  -t 22-80:32-90 ports 22-80 to 32-90
  -t 192.0.2.1/5 port 5 of 192.0.2.1 only
  -t %eth0/5     port 5 on interface eth0 only
  -t 5-25,~10-20 ports 5 to 9 and 21 to 25
  -t ~25         all ports except 25%ALLEX%%AUTOEX%
default: %FWD%`

// allHelp and allExamples are for passt only: pasta refuses "all", as
// the reference did before 2026.
const allHelp = `
  all[:TOADDR]   unbound non-ephemeral ports`

const allExamples = `
  -t ::1/all     all ports of local address ::1`

const autoHelp = `
  auto           only ports bound in namespace`

const autoExamples = `
  -t auto        ports bound in the namespace
  -t 80-82,auto  ports 80-82 if bound there`

// broadcast4 is the IPv4 limited broadcast address.
var broadcast4 = netip.AddrFrom4([4]byte{255, 255, 255, 255})

// parseAddr parses an IPv4 or IPv6 address without zone, as inet_pton(3)
// would.
func parseAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, errors.New("not an IPv4 or IPv6 address")
	}
	return a, nil
}

// isV4Compat reports whether a is a deprecated IPv4-compatible IPv6
// address, ::a.b.c.d other than :: and ::1.
func isV4Compat(a netip.Addr) bool {
	if !a.Is6() || a.Is4In6() {
		return false
	}
	b := a.As16()
	for _, x := range b[:12] {
		if x != 0 {
			return false
		}
	}
	return !a.IsUnspecified() && !a.IsLoopback()
}

// validNAT accepts addresses usable for --map-host-loopback and
// --map-guest-addr.
func validNAT(a netip.Addr) bool {
	return !a.IsUnspecified() && !a.IsLoopback() && !a.IsMulticast() && a != broadcast4
}

// setByFamily parses v and stores it in v4 or v6 by address family.
func setByFamily(v string, valid func(netip.Addr) bool, v4, v6 *netip.Addr) error {
	a, err := parseAddr(v)
	if err != nil {
		return err
	}
	if !valid(a) {
		return errors.New("address not usable here")
	}
	if a.Is4() {
		*v4 = a
	} else {
		*v6 = a
	}
	return nil
}

// address handles -a ADDR[/LEN]. The address may be in square brackets.
func (p *parser) address(v string) error {
	text, rest := v, ""
	if strings.HasPrefix(v, "[") {
		end := strings.IndexByte(v, ']')
		if end < 0 {
			return errors.New("missing ']'")
		}
		text, rest = v[1:end], v[end+1:]
	} else if i := strings.IndexByte(v, '/'); i >= 0 {
		text, rest = v[:i], v[i:]
	}
	a, err := parseAddr(text)
	if err != nil {
		return err
	}
	// IPv4-mapped addresses count as IPv4, with a prefix length in IPv6
	// bits.
	mapped := a.Is4In6()
	a = a.Unmap()

	bits, hasLen := -1, false
	if rest != "" {
		lenStr, ok := strings.CutPrefix(rest, "/")
		if !ok {
			return fmt.Errorf("unexpected %q after address", rest)
		}
		if !allDigits(lenStr) || len(lenStr) > 3 {
			return errors.New("invalid prefix length")
		}
		bits, _ = strconv.Atoi(lenStr)
		hasLen = true
	}
	switch {
	case a.IsUnspecified() || a.IsMulticast() || a == broadcast4:
		return errors.New("not a unicast address")
	case a.IsLoopback():
		return errors.New("loopback address not allowed")
	}

	if a.Is6() {
		if hasLen && bits > 128 {
			return errors.New("invalid prefix length")
		}
		p.cfg.Addr6 = a
		return nil
	}

	switch {
	case hasLen:
		if mapped {
			if bits < 96 || bits > 128 {
				return errors.New("invalid prefix length")
			}
			bits -= 96
		}
		if bits > 32 {
			return errors.New("invalid prefix length")
		}
		if p.netmaskGiven {
			return errors.New("redundant prefix length, -n was given")
		}
		p.cfg.PrefixLen4 = bits
	case p.netmaskGiven:
		bits = p.cfg.PrefixLen4
	default:
		bits = classfulPrefixLen(a)
		p.cfg.PrefixLen4 = -1
	}
	p.cfg.Addr4 = netip.PrefixFrom(a, bits)
	p.addr4Prefix = hasLen
	return nil
}

// classfulPrefixLen is the prefix length of a's address class: 8 for class
// A, 16 for B, 24 for C, 32 otherwise.
func classfulPrefixLen(a netip.Addr) int {
	b := a.As4()[0]
	switch {
	case b&0x80 == 0:
		return 8
	case b&0xc0 == 0x80:
		return 16
	case b&0xe0 == 0xc0:
		return 24
	}
	return 32
}

// netmask handles -n MASK, dotted decimal or a prefix length.
func (p *parser) netmask(v string) error {
	if p.addr4Prefix {
		return errors.New("redundant prefix length, -a was given with one")
	}
	bits := -1
	if m, err := netip.ParseAddr(v); err == nil && m.Is4() {
		x := m.As4()
		mask := uint32(x[0])<<24 | uint32(x[1])<<16 | uint32(x[2])<<8 | uint32(x[3])
		ones := 0
		for mask&(1<<31) != 0 {
			mask <<= 1
			ones++
		}
		if mask != 0 {
			return errors.New("netmask is not contiguous")
		}
		bits = ones
	} else {
		n, err := parseCUint(v, 32)
		if err != nil {
			return errors.New("expected dotted decimal netmask or prefix length up to 32")
		}
		bits = int(n)
	}
	p.netmaskGiven = true
	p.cfg.PrefixLen4 = bits
	if p.cfg.Addr4.IsValid() {
		p.cfg.Addr4 = netip.PrefixFrom(p.cfg.Addr4.Addr(), bits)
	}
	return nil
}

// dns handles -D ADDR and -D none.
func (p *parser) dns(v string) error {
	c := p.cfg
	if v == "none" {
		c.DNSNone, c.DNS = true, nil
		c.DNSForward4, c.DNSForward6 = netip.Addr{}, netip.Addr{}
		c.DNSHost4, c.DNSHost6 = netip.Addr{}, netip.Addr{}
		return nil
	}
	a, err := parseAddr(v)
	if err != nil {
		return err
	}
	if a.IsUnspecified() {
		return errors.New("unspecified address")
	}
	c.DNSNone = false
	c.DNS = append(c.DNS, a)
	return nil
}

// search handles -S LIST and -S none.
func (p *parser) search(v string) error {
	c := p.cfg
	if v == "none" {
		c.SearchNone, c.Search = true, nil
		return nil
	}
	domains := strings.Fields(v)
	if len(domains) == 0 {
		return errors.New("empty search list")
	}
	for _, d := range domains {
		if err := checkDomain(d); err != nil {
			return err
		}
	}
	if len(c.Search)+len(domains) > MaxSearchDomains {
		return fmt.Errorf("too many search domains (maximum %d)", MaxSearchDomains)
	}
	c.SearchNone = false
	c.Search = append(c.Search, domains...)
	return nil
}

// parseMAC parses a 6-byte unicast MAC address.
func parseMAC(v string) (net.HardwareAddr, error) {
	mac, err := net.ParseMAC(v)
	switch {
	case err != nil || len(mac) != 6:
		return nil, errors.New("not a MAC address")
	case mac[0]&1 != 0:
		return nil, errors.New("not a unicast MAC address")
	}
	return mac, nil
}

// parseCUint parses an unsigned number the way strtoul(3) with base 0
// does, without leading white space or sign: "0x" starts hexadecimal, "0"
// octal, anything else is decimal. Values above max are refused.
func parseCUint(s string, max uint64) (uint64, error) {
	base, digits := uint64(10), s
	switch {
	case len(s) > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X'):
		base, digits = 16, s[2:]
	case len(s) > 1 && s[0] == '0':
		base, digits = 8, s[1:]
	}
	if digits == "" {
		return 0, errors.New("not a number")
	}
	var n uint64
	for i := range len(digits) {
		d := uint64(base)
		switch b := digits[i]; {
		case b >= '0' && b <= '9':
			d = uint64(b - '0')
		case b|0x20 >= 'a' && b|0x20 <= 'f':
			d = uint64(b|0x20-'a') + 10
		}
		if d >= base {
			return 0, errors.New("not a number")
		}
		if n > (max-d)/base {
			return 0, fmt.Errorf("out of range (maximum %d)", max)
		}
		n = n*base + d
	}
	return n, nil
}

func checkPath(v string, max int) error {
	switch {
	case v == "":
		return errors.New("empty path")
	case len(v) > max:
		return fmt.Errorf("path too long (maximum %d bytes)", max)
	case strings.IndexByte(v, 0) >= 0:
		return errors.New("NUL byte in path")
	}
	return nil
}

func checkIfname(v string) error {
	switch {
	case v == "":
		return errors.New("empty interface name")
	case len(v) > maxIfname:
		return fmt.Errorf("interface name too long (maximum %d characters)", maxIfname)
	case v == "." || v == ".." || strings.ContainsAny(v, "/ \t\n\v\f\r\x00:"):
		return errors.New("invalid interface name")
	}
	return nil
}

func checkDomain(v string) error {
	switch {
	case v == "":
		return errors.New("empty name")
	case len(v) > maxDomain:
		return fmt.Errorf("name too long (maximum %d characters)", maxDomain)
	}
	return nil
}
