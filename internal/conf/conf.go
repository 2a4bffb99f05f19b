package conf

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"
)

// Mode is the program personality, which decides the options accepted and
// their defaults.
type Mode int

// Modes.
const (
	// ModePasta connects a network namespace through a tap device.
	ModePasta Mode = iota
	// ModePasst connects a virtual machine through a UNIX domain socket.
	ModePasst
)

// String returns the program name for m, "pasta" or "passt".
func (m Mode) String() string {
	switch m {
	case ModePasta:
		return "pasta"
	case ModePasst:
		return "passt"
	}
	return "Mode(" + strconv.Itoa(int(m)) + ")"
}

// Version identifies this implementation, for --version.
const Version = "gopasst 0.1.0"

// Sentinel errors returned by [Parse] for options that end the program
// successfully; the caller prints [Usage] or [Version] and exits with
// status 0.
var (
	// ErrHelp is returned for -h/--help.
	ErrHelp = errors.New("help requested")
	// ErrVersion is returned for --version.
	ErrVersion = errors.New("version requested")
)

// Defaults and limits, as in the reference.
const (
	// DefaultMTU is the MTU advertised unless -m is given: the largest
	// 802.3 MTU minus the Ethernet header, rounded down to 32 bits.
	DefaultMTU = 65520
	// MaxMTU is the largest MTU -m accepts: the largest frame minus the
	// Ethernet header.
	MaxMTU = 65535 - 14
	// DefaultLogSize is the log file size limit unless --log-size is
	// given.
	DefaultLogSize = 1 << 20
	// MinLogSize is the smallest --log-size accepted.
	MinLogSize = 5 * 8192
	// NetnsRunDir is where --netns NAME looks for named namespaces.
	NetnsRunDir = "/run/netns"
	// MaxSearchDomains is the number of DNS search domains kept.
	MaxSearchDomains = 6
)

// Length limits of strings given on the command line.
const (
	maxIfname   = 15   // IFNAMSIZ - 1
	maxPath     = 4095 // PATH_MAX - 1
	maxSockPath = 107  // UNIX_PATH_MAX - 1
	maxDomain   = 253  // RFC 1035
)

// Config is the result of command line parsing. It holds what was given,
// validated for syntax and consistency; nothing is looked up on the host
// (interfaces, routes, users), that is left to the caller.
type Config struct {
	// Mode is the mode the arguments were parsed for.
	Mode Mode

	// Foreground, Debug, Trace and Quiet are -f, -d, --trace (which
	// implies Debug) and -q. -d and --trace clear Quiet, -q clears Debug
	// and Trace: the last one given wins.
	Foreground, Debug, Trace, Quiet bool
	// Stats is the --stats interval in seconds, 0 if not given.
	Stats int
	// LogFile is -l/--log-file, "" to log to the system logger.
	LogFile string
	// LogSize is --log-size, DefaultLogSize if not given.
	LogSize int64
	// RunAs is --runas (UID, UID:GID, LOGIN or LOGIN:GROUP), unresolved.
	RunAs string
	// NoSandbox is --no-sandbox (gopasst's own): no sandbox after set-up.
	NoSandbox bool
	// ConfPath is -c/--conf-path, the configuration socket path.
	ConfPath string
	// PIDFile is -P/--pid.
	PIDFile string
	// PcapFile is -p/--pcap.
	PcapFile string

	// MTU is -m/--mtu, DefaultMTU if not given; 0 means the MTU is not
	// advertised.
	MTU int
	// MTUSet tells whether -m was given.
	MTUSet bool

	// Addr4 is the IPv4 address from -a, with the prefix length from
	// "/LEN", -n, or else the address class. Zero if not given.
	Addr4 netip.Prefix
	// PrefixLen4 is the IPv4 prefix length given explicitly, with -n or
	// -a ADDR/LEN, -1 if none was.
	PrefixLen4 int
	// Addr6 is the IPv6 address from -a (a prefix length is validated
	// and dropped, as the reference always uses 64).
	Addr6 netip.Addr
	// Gateway4 and Gateway6 are from -g, the last one of each family.
	Gateway4, Gateway6 netip.Addr
	// Interface is -i, the template interface name.
	Interface string
	// OutboundIf4 and OutboundIf6 are --outbound-if4 and --outbound-if6.
	OutboundIf4, OutboundIf6 string
	// Outbound4 and Outbound6 are from -o, the last one of each family.
	Outbound4, Outbound6 netip.Addr
	// NSIfname is -I/--ns-ifname (pasta).
	NSIfname string
	// MAC is -M/--mac-addr, our MAC address; nil if not given.
	MAC net.HardwareAddr
	// NSMAC is --ns-mac-addr, the namespace interface's MAC (pasta).
	NSMAC net.HardwareAddr
	// IPv4Only and IPv6Only are -4 and -6; the last one given wins, so
	// at most one is set.
	IPv4Only, IPv6Only bool
	// ConfigNet is --config-net (pasta).
	ConfigNet bool
	// NoCopyRoutes and NoCopyAddrs are the deprecated --no-copy-routes
	// and --no-copy-addrs (pasta, need --config-net).
	NoCopyRoutes, NoCopyAddrs bool
	// NoMapGW is --no-map-gw, also set by --map-host-loopback none.
	NoMapGW bool
	// MapHostLoopback4 and MapHostLoopback6 are --map-host-loopback.
	MapHostLoopback4, MapHostLoopback6 netip.Addr
	// MapGuestAddr4 and MapGuestAddr6 are --map-guest-addr.
	MapGuestAddr4, MapGuestAddr6 netip.Addr
	// DNSForward4 and DNSForward6 are --dns-forward.
	DNSForward4, DNSForward6 netip.Addr
	// DNSHost4 and DNSHost6 are --dns-host.
	DNSHost4, DNSHost6 netip.Addr
	// Hostname is -H/--hostname, FQDN is --fqdn.
	Hostname, FQDN string
	// Freebind is --freebind, ChrootFallback is --chroot-fallback.
	Freebind, ChrootFallback bool
	// HostLoToNSLo is --host-lo-to-ns-lo (pasta; implied by
	// --splice-only).
	HostLoToNSLo bool
	// SpliceOnly is --splice-only (pasta).
	SpliceOnly bool

	// Netns is --netns as a path (a NAME becomes NetnsRunDir/NAME).
	Netns string
	// Userns is --userns, a path.
	Userns string
	// NetnsOnly is --netns-only, also implied by --netns without
	// --userns. A later --userns clears it.
	NetnsOnly bool
	// UDPTimeout, when non-zero, is --udp-timeout: the idle time after
	// which a UDP flow expires, instead of the host's conntrack timeouts.
	UDPTimeout time.Duration
	// MaxFlows, when non-zero, is --max-flows: the size of the flow table.
	MaxFlows int
	// NoOffload is --no-offload: the tap device moves plain frames, one
	// datagram each, without a virtio-net header.
	NoOffload bool

	// NoNetnsQuit is --no-netns-quit.
	NoNetnsQuit bool
	// TargetPID is the pasta PID operand, 0 if none. The namespaces to
	// join are those of /proc/PID/ns, Userns overriding the user one.
	TargetPID int
	// Command is the pasta COMMAND [ARG]... operand, nil if none (then a
	// shell is spawned, unless TargetPID or Netns says where to attach).
	Command []string

	// Protocol and service switches, --no-udp and so on. NoNDP is
	// implied by NoICMP, and NoRA by ConfigNet. NoSplice is always set in
	// passt mode.
	NoUDP, NoTCP, NoICMP, NoDHCP, NoNDP, NoDHCPv6, NoRA, NoSplice bool
	// NoDHCPDNS and NoDHCPSearch are the passt options --no-dhcp-dns and
	// --no-dhcp-search; DHCPDNS and DHCPSearch the pasta options
	// --dhcp-dns and --dhcp-search. See AdvertiseDNS and AdvertiseSearch.
	NoDHCPDNS, NoDHCPSearch, DHCPDNS, DHCPSearch bool
	// DNS holds the -D/--dns addresses in order; DNSNone is -D none,
	// which also clears the list and the --dns-forward and --dns-host
	// addresses given before it.
	DNS     []netip.Addr
	DNSNone bool
	// Search holds the -S/--search domains; each option may give several,
	// separated by spaces. SearchNone is -S none.
	Search     []string
	SearchNone bool

	// Socket is -s/--socket/--socket-path (passt).
	Socket string
	// FD is -F/--fd (passt), -1 if not given.
	FD int
	// OneOff is -1/--one-off (passt), also implied by -F.
	OneOff bool
	// VhostUser is --vhost-user (passt).
	VhostUser bool
	// PrintCapabilities is --print-capabilities (passt): print the
	// vhost-user back-end capabilities and exit.
	PrintCapabilities bool
	// RepairPath is --repair-path (passt, vhost-user), possibly "none".
	RepairPath string
	// MigrateExit and MigrateNoLinger are the deprecated --migrate-exit
	// and --migrate-no-linger (passt, vhost-user).
	MigrateExit, MigrateNoLinger bool

	// UDPFwd, UDPNSFwd, TCPFwd and TCPNSFwd are -u, -U, -t and -T. Their
	// Mode is FwdUnset if the option was never given. Rules of -T and -U
	// have no listening address (beyond the 0.0.0.0 or :: that -4 or -6
	// imply) nor interface: they are to be bound to loopback in the
	// namespace.
	UDPFwd, UDPNSFwd, TCPFwd, TCPNSFwd Forward

	// Warnings are messages about deprecated or doubtful options, for
	// the caller to log once logging is set up.
	Warnings []string
}

// AdvertiseDNS tells whether DNS resolvers are to be sent via
// DHCP/DHCPv6/NDP: by default in passt mode, only with --dhcp-dns in pasta
// mode.
func (c *Config) AdvertiseDNS() bool {
	if c.Mode == ModePasta {
		return c.DHCPDNS
	}
	return !c.NoDHCPDNS
}

// AdvertiseSearch tells whether the DNS search list is to be sent via
// DHCP/DHCPv6/NDP: by default in passt mode, only with --dhcp-search in
// pasta mode.
func (c *Config) AdvertiseSearch() bool {
	if c.Mode == ModePasta {
		return c.DHCPSearch
	}
	return !c.NoDHCPSearch
}

// ApplyForwardDefaults sets the forwarding directions no option configured
// to the mode's default: in pasta mode "auto" for -t, -u, -T and -U (unless
// the protocol is disabled, then "none"), in passt mode "none". ephemeral
// is the range to leave out of "auto", the zero value meaning
// [DefaultEphemeral].
func (c *Config) ApplyForwardDefaults(ephemeral PortRange) error {
	dirs := []struct {
		f        *Forward
		opt      byte
		disabled bool
	}{
		{&c.TCPFwd, 't', c.NoTCP}, {&c.UDPFwd, 'u', c.NoUDP},
		{&c.TCPNSFwd, 'T', c.NoTCP}, {&c.UDPNSFwd, 'U', c.NoUDP},
	}
	for _, d := range dirs {
		if d.f.Mode != FwdUnset {
			continue
		}
		if c.Mode != ModePasta || d.disabled {
			d.f.Mode = FwdNone
			continue
		}
		err := d.f.AddSpec("auto", SpecOptions{
			Opt: d.opt, Mode: c.Mode, Ephemeral: ephemeral,
			IPv4Only: c.IPv4Only, IPv6Only: c.IPv6Only,
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// OptionError reports an invalid option or option argument. Its message is
// one line.
type OptionError struct {
	// Opt is the option as given ("-m", "--mtu"), or "" for an operand.
	Opt string
	// Value is the offending argument, if HasValue.
	Value    string
	HasValue bool
	// Reason says what is wrong.
	Reason string
}

// Error formats the error as one line.
func (e *OptionError) Error() string {
	switch {
	case e.HasValue && e.Opt != "":
		return fmt.Sprintf("invalid argument %q for %s: %s", e.Value, e.Opt, e.Reason)
	case e.HasValue:
		return fmt.Sprintf("invalid argument %q: %s", e.Value, e.Reason)
	}
	return e.Opt + ": " + e.Reason
}

// Parser parses command lines. The zero value is not usable: set Mode.
type Parser struct {
	// Mode selects pasta or passt options and defaults.
	Mode Mode
	// EphemeralRange returns the ephemeral port range, which "all" and
	// exclusion-only port specifications skip. It is only called if
	// port forwarding options are given. If nil, [SystemEphemeralRange]
	// is used; if it fails, [DefaultEphemeral] is.
	EphemeralRange func() (PortRange, error)
}

// Parse parses args (without argv[0]) for the given mode. See [Parser].
func Parse(mode Mode, args []string) (*Config, error) {
	return (&Parser{Mode: mode}).Parse(args)
}

// portOpt is a -t/-u/-T/-U option kept for the second pass.
type portOpt struct {
	opt  byte
	spec string
}

// parser is the state of one Parse call.
type parser struct {
	cfg  *Config
	mode Mode

	// -a/-n interplay.
	netmaskGiven bool // -n seen
	addr4Prefix  bool // last IPv4 -a had "/LEN"

	ports []portOpt
}

// Parse parses args (without argv[0]). Options are processed in order, so
// when options conflict the last one wins, as with the reference; errors
// are reported for the first bad option. Port forwarding specifications
// are interpreted after all other options, once -4, -6, --no-tcp and
// --no-udp are known.
func (ps *Parser) Parse(args []string) (*Config, error) {
	if ps.Mode != ModePasta && ps.Mode != ModePasst {
		return nil, fmt.Errorf("unknown mode %d", ps.Mode)
	}
	p := &parser{
		mode: ps.Mode,
		cfg: &Config{
			Mode:       ps.Mode,
			LogSize:    DefaultLogSize,
			MTU:        DefaultMTU,
			PrefixLen4: -1,
			FD:         -1,
		},
	}

	g := &getopt{opts: optionTable, args: args}
	for {
		o, used, val, done, err := g.next()
		if err != nil {
			return nil, err
		}
		if done {
			break
		}
		if !o.modes.has(p.mode) {
			other := ModePasta
			if p.mode == ModePasta {
				other = ModePasst
			}
			return nil, &OptionError{Opt: used, Reason: "only valid in " + other.String() + " mode"}
		}
		if err := o.apply(p, val); err != nil {
			var oe *OptionError
			if errors.As(err, &oe) || errors.Is(err, ErrHelp) || errors.Is(err, ErrVersion) {
				return nil, err
			}
			if !o.hasArg {
				return nil, &OptionError{Opt: used, Reason: err.Error()}
			}
			return nil, &OptionError{Opt: used, Value: val, HasValue: true, Reason: err.Error()}
		}
	}

	if err := p.operands(args[g.idx:]); err != nil {
		return nil, err
	}
	if err := p.finish(); err != nil {
		return nil, err
	}
	if err := p.parsePorts(ps.EphemeralRange); err != nil {
		return nil, err
	}
	return p.cfg, nil
}

// operands handles what follows the options: nothing for passt; for pasta
// a PID (a single all-digit operand) or a command with its arguments.
func (p *parser) operands(ops []string) error {
	c := p.cfg
	if len(ops) == 0 {
		return nil
	}
	if p.mode != ModePasta {
		return &OptionError{Value: ops[0], HasValue: true, Reason: "extra non-option argument"}
	}
	if c.Netns != "" {
		return &OptionError{Opt: "--netns", Reason: "can't be given together with a PID or command"}
	}
	if len(ops) == 1 && allDigits(ops[0]) {
		pid, err := strconv.ParseInt(ops[0], 10, 32)
		if err != nil || pid == 0 {
			return &OptionError{Value: ops[0], HasValue: true, Reason: "invalid PID"}
		}
		c.TargetPID = int(pid)
		return nil
	}
	c.Command = append([]string(nil), ops...)
	return nil
}

func allDigits(s string) bool {
	for i := range len(s) {
		if !isDigit(s[i]) {
			return false
		}
	}
	return s != ""
}

// finish checks combinations of options and applies the implications the
// reference applies unconditionally.
func (p *parser) finish() error {
	c := p.cfg
	if p.mode == ModePasst {
		c.NoSplice = true
		if c.RepairPath != "" && c.RepairPath != "none" && !c.VhostUser {
			return &OptionError{Opt: "--repair-path", Reason: "only valid with --vhost-user"}
		}
		if c.MigrateExit && !c.VhostUser {
			return &OptionError{Opt: "--migrate-exit", Reason: "only valid with --vhost-user"}
		}
		if c.MigrateNoLinger && !c.VhostUser {
			return &OptionError{Opt: "--migrate-no-linger", Reason: "only valid with --vhost-user"}
		}
	}
	if c.Stats != 0 && !c.Foreground {
		return &OptionError{Opt: "--stats", Reason: "statistics can only be displayed in foreground (-f)"}
	}
	if c.HostLoToNSLo && c.NoSplice {
		return &OptionError{Opt: "--host-lo-to-ns-lo", Reason: "incompatible with --no-splice"}
	}
	if p.mode == ModePasta {
		if c.NoCopyRoutes && !c.ConfigNet {
			return &OptionError{Opt: "--no-copy-routes", Reason: "needs --config-net"}
		}
		if c.NoCopyAddrs && !c.ConfigNet {
			return &OptionError{Opt: "--no-copy-addrs", Reason: "needs --config-net"}
		}
		if c.SpliceOnly {
			if c.NoSplice {
				return &OptionError{Opt: "--splice-only", Reason: "incompatible with --no-splice"}
			}
			c.HostLoToNSLo = true
			c.NoICMP = true
			c.DNSNone, c.DNS = true, nil
			c.SearchNone, c.Search = true, nil
		}
		// Attaching to a namespace by path, without a user namespace:
		// don't join or create one.
		if c.Netns != "" && c.Userns == "" {
			c.NetnsOnly = true
		}
	}
	if c.NoICMP {
		c.NoNDP = true
	}
	if c.ConfigNet {
		c.NoRA = true
	}
	return p.checkMTU()
}

// Smallest MTUs of each family (RFC 791, RFC 8200).
const (
	MinMTU4 = 68
	MinMTU6 = 1280
)

// checkMTU refuses an MTU that no family could use, and one too small for
// IPv6 where pasta would configure IPv6 on the namespace's interface
// with it (the kernel removes IPv6 from an interface with such an MTU:
// the reference warns and then fails to add the address). Elsewhere an
// MTU too small for one family is a warning, as with the reference.
func (p *parser) checkMTU() error {
	c := p.cfg
	if c.MTU == 0 || c.SpliceOnly { // no tap device, no guest
		return nil
	}
	small4 := fmt.Sprintf("MTU %d is too small for IPv4 (minimum %d)", c.MTU, MinMTU4)
	small6 := fmt.Sprintf("MTU %d is too small for IPv6 (minimum %d)", c.MTU, MinMTU6)
	switch {
	case c.MTU < MinMTU4 && c.IPv6Only:
		// Nor does the kernel take it for an Ethernet device.
		return &OptionError{Opt: "-m", Reason: small6}
	case c.MTU < MinMTU4:
		return &OptionError{Opt: "-m", Reason: small4}
	case c.MTU < MinMTU6 && !c.IPv4Only && p.mode == ModePasta && c.ConfigNet:
		return &OptionError{Opt: "-m", Reason: small6 + ", give -4 for IPv4 only"}
	case c.MTU < MinMTU6 && !c.IPv4Only:
		c.Warnings = append(c.Warnings, small6)
	}
	return nil
}

// parsePorts interprets the port forwarding options, in order.
func (p *parser) parsePorts(ephemeral func() (PortRange, error)) error {
	if len(p.ports) == 0 {
		return nil
	}
	if ephemeral == nil {
		ephemeral = SystemEphemeralRange
	}
	eph, err := ephemeral()
	if err != nil {
		p.cfg.Warnings = append(p.cfg.Warnings, fmt.Sprintf(
			"can't read ephemeral port range, assuming %s: %v", DefaultEphemeral, err))
		eph = DefaultEphemeral
	}
	c := p.cfg
	for _, po := range p.ports {
		var f *Forward
		disabled := c.NoTCP
		switch po.opt {
		case 't':
			f = &c.TCPFwd
		case 'T':
			f = &c.TCPNSFwd
		case 'u':
			f, disabled = &c.UDPFwd, c.NoUDP
		case 'U':
			f, disabled = &c.UDPNSFwd, c.NoUDP
		}
		err := f.AddSpec(po.spec, SpecOptions{
			Opt: po.opt, Mode: p.mode, Ephemeral: eph,
			IPv4Only: c.IPv4Only, IPv6Only: c.IPv6Only,
			Disabled: disabled,
		})
		if err != nil {
			return err
		}
	}
	return nil
}
