package conf

import (
	"errors"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// fixedEphemeral keeps tests independent of the host.
func fixedEphemeral() (PortRange, error) { return DefaultEphemeral, nil }

func parse(mode Mode, args ...string) (*Config, error) {
	return (&Parser{Mode: mode, EphemeralRange: fixedEphemeral}).Parse(args)
}

func mustParse(t *testing.T, mode Mode, args ...string) *Config {
	t.Helper()
	c, err := parse(mode, args...)
	if err != nil {
		t.Fatalf("Parse(%v, %q): %v", mode, args, err)
	}
	return c
}

func TestDefaults(t *testing.T) {
	for _, mode := range []Mode{ModePasta, ModePasst} {
		c := mustParse(t, mode)
		want := &Config{
			Mode: mode, LogSize: DefaultLogSize, MTU: DefaultMTU,
			PrefixLen4: -1, FD: -1, NoSplice: mode == ModePasst,
		}
		if !reflect.DeepEqual(c, want) {
			t.Errorf("%v defaults:\n got %+v\nwant %+v", mode, c, want)
		}
	}
}

// TestParse checks options one by one; check inspects the result.
func TestParse(t *testing.T) {
	mac := func(s string) net.HardwareAddr { m, _ := net.ParseMAC(s); return m }
	ip := netip.MustParseAddr
	pfx := netip.MustParsePrefix
	tests := []struct {
		name  string
		mode  Mode
		args  []string
		check func(c *Config) bool
	}{
		// Clustering, attached and separate values, long forms.
		{"cluster", ModePasta, []string{"-fd"}, func(c *Config) bool { return c.Foreground && c.Debug }},
		{"quiet last wins", ModePasta, []string{"-dq"}, func(c *Config) bool { return c.Quiet && !c.Debug }},
		{"debug last wins", ModePasta, []string{"-qd"}, func(c *Config) bool { return c.Debug && !c.Quiet }},
		{"trace implies debug", ModePasta, []string{"-q", "--trace"},
			func(c *Config) bool { return c.Trace && c.Debug && !c.Quiet }},
		{"quiet clears trace", ModePasta, []string{"--trace", "-q"},
			func(c *Config) bool { return !c.Trace && !c.Debug && c.Quiet }},
		{"-4 then -6", ModePasta, []string{"-4", "-6"}, func(c *Config) bool { return c.IPv6Only && !c.IPv4Only }},
		{"-6 then -4", ModePasta, []string{"-64"}, func(c *Config) bool { return c.IPv4Only && !c.IPv6Only }},
		{"long -4", ModePasta, []string{"--ipv4-only"}, func(c *Config) bool { return c.IPv4Only }},
		{"attached value in cluster", ModePasta, []string{"-fu5000"},
			func(c *Config) bool { return c.Foreground && c.UDPFwd.Rules[0].First == 5000 }},
		{"separate value", ModePasta, []string{"-u", "5000"}, func(c *Config) bool { return c.UDPFwd.Rules[0].First == 5000 }},
		{"value looks like option", ModePasta, []string{"-l", "-d"}, func(c *Config) bool { return c.LogFile == "-d" && !c.Debug }},
		{"long with =", ModePasta, []string{"--udp-ports=5000"}, func(c *Config) bool { return c.UDPFwd.Rules[0].First == 5000 }},
		{"long separate", ModePasta, []string{"--udp-ports", "5000"}, func(c *Config) bool { return c.UDPFwd.Rules[0].First == 5000 }},
		{"long value with =", ModePasta, []string{"--log-file=a=b"}, func(c *Config) bool { return c.LogFile == "a=b" }},
		{"long abbreviated", ModePasta, []string{"--fore", "--deb"}, func(c *Config) bool { return c.Foreground && c.Debug }},
		{"exact name beats prefix", ModePasta, []string{"--dns", "192.0.2.53"},
			func(c *Config) bool { return len(c.DNS) == 1 && !c.DNSForward4.IsValid() }},
		{"abbreviation of aliases", ModePasst, []string{"--sock", "/tmp/s"}, func(c *Config) bool { return c.Socket == "/tmp/s" }},
		{"alias", ModePasst, []string{"--socket-path=/tmp/s"}, func(c *Config) bool { return c.Socket == "/tmp/s" }},
		{"stderr ignored", ModePasta, []string{"-e", "--stderr"}, func(c *Config) bool { return len(c.Warnings) == 2 }},

		// Logging and files.
		{"log file", ModePasta, []string{"-l", "/tmp/log", "--log-size", "0x100000"},
			func(c *Config) bool { return c.LogFile == "/tmp/log" && c.LogSize == 1<<20 }},
		{"log size minimum", ModePasta, []string{"--log-size=40960"}, func(c *Config) bool { return c.LogSize == 40960 }},
		{"pid and pcap", ModePasta, []string{"-P", "/run/p.pid", "-p", "/tmp/x.pcap"},
			func(c *Config) bool { return c.PIDFile == "/run/p.pid" && c.PcapFile == "/tmp/x.pcap" }},
		{"stats after -f", ModePasta, []string{"-f", "--stats", "5"}, func(c *Config) bool { return c.Stats == 5 }},
		{"stats before -f", ModePasta, []string{"--stats", "5", "-f"}, func(c *Config) bool { return c.Stats == 5 }},
		{"runas", ModePasta, []string{"--runas", "1000:1000"}, func(c *Config) bool { return c.RunAs == "1000:1000" }},
		{"no-sandbox", ModePasst, []string{"--no-sandbox"}, func(c *Config) bool { return c.NoSandbox }},
		{"conf path", ModePasta, []string{"-c", "/tmp/ctl"}, func(c *Config) bool { return c.ConfPath == "/tmp/ctl" }},

		// MTU.
		{"mtu", ModePasta, []string{"-m", "1500"}, func(c *Config) bool { return c.MTU == 1500 && c.MTUSet }},
		{"mtu zero", ModePasta, []string{"-m0"}, func(c *Config) bool { return c.MTU == 0 && c.MTUSet }},
		{"mtu hex", ModePasta, []string{"--mtu=0x5dc"}, func(c *Config) bool { return c.MTU == 1500 }},
		{"mtu octal", ModePasta, []string{"--mtu=02734"}, func(c *Config) bool { return c.MTU == 1500 }},
		{"mtu max", ModePasta, []string{"-m", "65521"}, func(c *Config) bool { return c.MTU == MaxMTU }},
		{"small mtu warns", ModePasta, []string{"-m", "576"}, func(c *Config) bool { return len(c.Warnings) == 1 }},
		{"small mtu fine for -4", ModePasta, []string{"-4", "-m", "576"}, func(c *Config) bool { return len(c.Warnings) == 0 }},
		{"ipv4 minimum mtu", ModePasta, []string{"-4", "--config-net", "-m", "68"}, func(c *Config) bool { return c.MTU == 68 && len(c.Warnings) == 0 }},
		{"ipv6 minimum mtu", ModePasta, []string{"--config-net", "-m", "1280"}, func(c *Config) bool { return c.MTU == 1280 && len(c.Warnings) == 0 }},
		{"small mtu warns in passt", ModePasst, []string{"-m", "68"}, func(c *Config) bool {
			return len(c.Warnings) == 1 && c.Warnings[0] == "MTU 68 is too small for IPv6 (minimum 1280)"
		}},
		{"small mtu warns for -6 in passt", ModePasst, []string{"-6", "-m", "1000"}, func(c *Config) bool { return len(c.Warnings) == 1 }},
		{"mtu unused with --splice-only", ModePasta, []string{"--config-net", "--splice-only", "-m", "60"}, func(c *Config) bool { return len(c.Warnings) == 0 }},
		{"last mtu counts", ModePasta, []string{"--config-net", "-m", "68", "-m", "1500"}, func(c *Config) bool { return c.MTU == 1500 }},

		// Addresses.
		{"address class C", ModePasta, []string{"-a", "192.0.2.1"},
			func(c *Config) bool { return c.Addr4 == pfx("192.0.2.1/24") && c.PrefixLen4 == -1 }},
		{"address class A", ModePasta, []string{"-a", "10.1.2.3"}, func(c *Config) bool { return c.Addr4 == pfx("10.1.2.3/8") }},
		{"address class B", ModePasta, []string{"-a", "172.16.0.1"}, func(c *Config) bool { return c.Addr4 == pfx("172.16.0.1/16") }},
		{"address class E", ModePasta, []string{"-a", "240.0.0.1"}, func(c *Config) bool { return c.Addr4 == pfx("240.0.0.1/32") }},
		{"address cidr", ModePasta, []string{"-a", "192.0.2.1/28"},
			func(c *Config) bool { return c.Addr4 == pfx("192.0.2.1/28") && c.PrefixLen4 == 28 }},
		{"netmask before address", ModePasta, []string{"-n", "255.255.255.240", "-a", "192.0.2.1"},
			func(c *Config) bool { return c.Addr4 == pfx("192.0.2.1/28") && c.PrefixLen4 == 28 }},
		{"netmask after address", ModePasta, []string{"-a", "192.0.2.1", "-n", "20"},
			func(c *Config) bool { return c.Addr4 == pfx("192.0.2.1/20") && c.PrefixLen4 == 20 }},
		{"netmask alone", ModePasta, []string{"-n", "0x10"},
			func(c *Config) bool { return !c.Addr4.IsValid() && c.PrefixLen4 == 16 }},
		{"netmask /32", ModePasta, []string{"-n", "255.255.255.255"}, func(c *Config) bool { return c.PrefixLen4 == 32 }},
		{"netmask /0", ModePasta, []string{"-n", "0.0.0.0"}, func(c *Config) bool { return c.PrefixLen4 == 0 }},
		{"address twice, last wins", ModePasta, []string{"-a", "192.0.2.1/24", "-a", "198.51.100.1"},
			func(c *Config) bool { return c.Addr4 == pfx("198.51.100.1/24") && c.PrefixLen4 == -1 }},
		{"ipv6 address", ModePasta, []string{"-a", "2001:db8::1"}, func(c *Config) bool { return c.Addr6 == ip("2001:db8::1") }},
		{"ipv6 address with prefix", ModePasta, []string{"-a", "2001:db8::1/64", "-n", "24"},
			func(c *Config) bool { return c.Addr6 == ip("2001:db8::1") && c.PrefixLen4 == 24 }},
		{"bracketed ipv6 address", ModePasta, []string{"-a", "[2001:db8::2]/128"}, func(c *Config) bool { return c.Addr6 == ip("2001:db8::2") }},
		{"both families", ModePasta, []string{"-a", "192.0.2.1", "-a", "2001:db8::1"},
			func(c *Config) bool { return c.Addr4.IsValid() && c.Addr6.IsValid() }},
		{"ipv4-mapped address", ModePasta, []string{"-a", "::ffff:192.0.2.1/120"},
			func(c *Config) bool { return c.Addr4 == pfx("192.0.2.1/24") && !c.Addr6.IsValid() }},
		{"gateways", ModePasta, []string{"-g", "192.0.2.254", "-g", "fe80::1", "-g", "192.0.2.253"},
			func(c *Config) bool { return c.Gateway4 == ip("192.0.2.253") && c.Gateway6 == ip("fe80::1") }},
		{"outbound", ModePasta, []string{"-o", "127.0.0.1", "-o", "2001:db8::9"},
			func(c *Config) bool { return c.Outbound4 == ip("127.0.0.1") && c.Outbound6 == ip("2001:db8::9") }},
		{"interfaces", ModePasta, []string{"-i", "eth0", "--outbound-if4", "eth1", "--outbound-if6", "wlan0"},
			func(c *Config) bool {
				return c.Interface == "eth0" && c.OutboundIf4 == "eth1" && c.OutboundIf6 == "wlan0"
			}},
		{"mac", ModePasta, []string{"-M", "9a:55:9a:55:9a:56"}, func(c *Config) bool { return c.MAC.String() == "9a:55:9a:55:9a:56" }},
		{"mac dashes", ModePasst, []string{"--mac-addr=02-00-00-00-00-01"}, func(c *Config) bool { return c.MAC.String() == "02:00:00:00:00:01" }},
		{"ns mac", ModePasta, []string{"--ns-mac-addr", "02:00:00:00:00:02"},
			func(c *Config) bool { return reflect.DeepEqual(c.NSMAC, mac("02:00:00:00:00:02")) && c.MAC == nil }},
		{"map host loopback", ModePasta, []string{"--map-host-loopback", "192.0.2.2", "--map-host-loopback", "2001:db8::2"},
			func(c *Config) bool {
				return c.MapHostLoopback4 == ip("192.0.2.2") && c.MapHostLoopback6 == ip("2001:db8::2") && !c.NoMapGW
			}},
		{"map host loopback none", ModePasta, []string{"--map-host-loopback", "192.0.2.2", "--map-host-loopback", "none"},
			func(c *Config) bool { return !c.MapHostLoopback4.IsValid() && c.NoMapGW }},
		{"map guest addr", ModePasta, []string{"--map-guest-addr", "192.0.2.3"}, func(c *Config) bool { return c.MapGuestAddr4 == ip("192.0.2.3") }},
		{"no map gw", ModePasta, []string{"--no-map-gw"}, func(c *Config) bool { return c.NoMapGW }},

		// DNS.
		{"dns list", ModePasta, []string{"-D", "192.0.2.53", "--dns", "2001:db8::53", "-D192.0.2.54"},
			func(c *Config) bool {
				return slices.Equal(c.DNS, []netip.Addr{ip("192.0.2.53"), ip("2001:db8::53"), ip("192.0.2.54")}) && !c.DNSNone
			}},
		{"dns none", ModePasta, []string{"--dns-forward", "192.0.2.10", "--dns-host", "192.0.2.11", "-D", "192.0.2.53", "-D", "none"},
			func(c *Config) bool {
				return c.DNS == nil && c.DNSNone && !c.DNSForward4.IsValid() && !c.DNSHost4.IsValid()
			}},
		{"dns none then address", ModePasta, []string{"-D", "none", "-D", "192.0.2.53"},
			func(c *Config) bool { return len(c.DNS) == 1 && !c.DNSNone }},
		{"dns forward and host", ModePasta, []string{"--dns-forward", "192.0.2.10", "--dns-forward", "fd00::10", "--dns-host", "::1"},
			func(c *Config) bool {
				return c.DNSForward4 == ip("192.0.2.10") && c.DNSForward6 == ip("fd00::10") && c.DNSHost6 == ip("::1")
			}},
		{"search list", ModePasta, []string{"-S", "a.example b.example", "--search", "c.example"},
			func(c *Config) bool { return slices.Equal(c.Search, []string{"a.example", "b.example", "c.example"}) }},
		{"search none", ModePasta, []string{"-S", "a.example", "-S", "none"}, func(c *Config) bool { return c.Search == nil && c.SearchNone }},
		{"hostname and fqdn", ModePasta, []string{"-H", "box", "--fqdn", "box.example"},
			func(c *Config) bool { return c.Hostname == "box" && c.FQDN == "box.example" }},
		{"pasta dhcp dns", ModePasta, []string{"--dhcp-dns", "--dhcp-search"},
			func(c *Config) bool { return c.DHCPDNS && c.DHCPSearch && c.AdvertiseDNS() && c.AdvertiseSearch() }},
		{"pasta default no dhcp dns", ModePasta, nil, func(c *Config) bool { return !c.AdvertiseDNS() && !c.AdvertiseSearch() }},
		{"passt no dhcp dns", ModePasst, []string{"--no-dhcp-dns", "--no-dhcp-search"},
			func(c *Config) bool {
				return c.NoDHCPDNS && c.NoDHCPSearch && !c.AdvertiseDNS() && !c.AdvertiseSearch()
			}},
		{"passt default dhcp dns", ModePasst, nil, func(c *Config) bool { return c.AdvertiseDNS() && c.AdvertiseSearch() }},

		// Switches and implications.
		{"protocol switches", ModePasta, []string{"--no-udp", "--no-tcp", "--no-dhcp", "--no-dhcpv6", "--no-ra", "--no-splice", "--freebind", "--chroot-fallback"},
			func(c *Config) bool {
				return c.NoUDP && c.NoTCP && c.NoDHCP && c.NoDHCPv6 && c.NoRA && c.NoSplice && c.Freebind && c.ChrootFallback && !c.NoNDP
			}},
		{"no-icmp implies no-ndp", ModePasta, []string{"--no-icmp"}, func(c *Config) bool { return c.NoICMP && c.NoNDP }},
		{"config-net implies no-ra", ModePasta, []string{"--config-net"}, func(c *Config) bool { return c.ConfigNet && c.NoRA }},
		{"no-copy with config-net", ModePasta, []string{"--no-copy-routes", "--no-copy-addrs", "--config-net"},
			func(c *Config) bool { return c.NoCopyRoutes && c.NoCopyAddrs && len(c.Warnings) == 2 }},
		{"splice only", ModePasta, []string{"-D", "192.0.2.53", "--splice-only"},
			func(c *Config) bool {
				return c.SpliceOnly && c.HostLoToNSLo && c.NoICMP && c.NoNDP && c.DNSNone && c.DNS == nil && c.SearchNone
			}},
		{"host lo to ns lo", ModePasta, []string{"--host-lo-to-ns-lo"}, func(c *Config) bool { return c.HostLoToNSLo }},
		{"passt never splices", ModePasst, nil, func(c *Config) bool { return c.NoSplice }},

		// passt specific.
		{"socket", ModePasst, []string{"-s", "/tmp/passt.sock"}, func(c *Config) bool { return c.Socket == "/tmp/passt.sock" && c.FD == -1 }},
		{"fd", ModePasst, []string{"-F", "5"}, func(c *Config) bool { return c.FD == 5 && c.OneOff }},
		{"socket then fd", ModePasst, []string{"-s", "/tmp/x", "--fd=5"}, func(c *Config) bool { return c.FD == 5 && c.Socket == "" }},
		{"fd then socket", ModePasst, []string{"-F", "5", "-s", "/tmp/x"},
			func(c *Config) bool { return c.FD == -1 && c.Socket == "/tmp/x" && c.OneOff }},
		{"one off", ModePasst, []string{"-1"}, func(c *Config) bool { return c.OneOff }},
		{"vhost-user", ModePasst, []string{"--repair-path", "/tmp/r", "--vhost-user", "--migrate-exit", "--migrate-no-linger"},
			func(c *Config) bool {
				return c.VhostUser && c.RepairPath == "/tmp/r" && c.MigrateExit && c.MigrateNoLinger
			}},
		{"repair path none", ModePasst, []string{"--repair-path", "none"}, func(c *Config) bool { return c.RepairPath == "none" }},
		{"print capabilities", ModePasst, []string{"--print-capabilities"}, func(c *Config) bool { return c.PrintCapabilities }},

		// pasta specific, operands.
		{"ns ifname", ModePasta, []string{"-I", "tap0"}, func(c *Config) bool { return c.NSIfname == "tap0" }},
		{"pid", ModePasta, []string{"1234"}, func(c *Config) bool { return c.TargetPID == 1234 && c.Command == nil }},
		{"pid after options", ModePasta, []string{"-d", "--config-net", "1234"}, func(c *Config) bool { return c.TargetPID == 1234 && c.Debug }},
		{"pid after --", ModePasta, []string{"--", "1234"}, func(c *Config) bool { return c.TargetPID == 1234 }},
		{"number and argument is a command", ModePasta, []string{"1234", "x"},
			func(c *Config) bool { return c.TargetPID == 0 && slices.Equal(c.Command, []string{"1234", "x"}) }},
		{"non-numeric is a command", ModePasta, []string{"12a"},
			func(c *Config) bool { return c.TargetPID == 0 && slices.Equal(c.Command, []string{"12a"}) }},
		{"command stops option parsing", ModePasta, []string{"-f", "sh", "-c", "echo -d", "-q"},
			func(c *Config) bool {
				return c.Foreground && !c.Debug && !c.Quiet && slices.Equal(c.Command, []string{"sh", "-c", "echo -d", "-q"})
			}},
		{"-- then option-like command", ModePasta, []string{"--", "-d"},
			func(c *Config) bool { return !c.Debug && slices.Equal(c.Command, []string{"-d"}) }},
		{"single dash is an operand", ModePasta, []string{"-"}, func(c *Config) bool { return slices.Equal(c.Command, []string{"-"}) }},
		{"netns name", ModePasta, []string{"--netns", "foo"},
			func(c *Config) bool { return c.Netns == "/run/netns/foo" && c.NetnsOnly }},
		{"netns path", ModePasta, []string{"--netns=./foo"}, func(c *Config) bool { return c.Netns == "./foo" }},
		{"netns with userns", ModePasta, []string{"--netns", "/run/netns/x", "--userns", "/proc/1/ns/user"},
			func(c *Config) bool { return c.Userns == "/proc/1/ns/user" && !c.NetnsOnly }},
		{"netns-only after userns", ModePasta, []string{"--userns", "/proc/1/ns/user", "--netns-only"},
			func(c *Config) bool { return c.NetnsOnly && c.Userns == "" }},
		{"userns after netns-only", ModePasta, []string{"--netns-only", "--userns", "/proc/1/ns/user"},
			func(c *Config) bool { return !c.NetnsOnly && c.Userns == "/proc/1/ns/user" }},
		{"no netns quit", ModePasta, []string{"--no-netns-quit"}, func(c *Config) bool { return c.NoNetnsQuit }},

		// Port forwarding through Parse.
		{"all four directions", ModePasta, []string{"-t", "22", "-u", "53", "-T", "8080", "-U", "5353"},
			func(c *Config) bool {
				return c.TCPFwd.Rules[0].First == 22 && c.UDPFwd.Rules[0].First == 53 &&
					c.TCPNSFwd.Rules[0].First == 8080 && c.UDPNSFwd.Rules[0].First == 5353
			}},
		{"unset directions stay unset", ModePasta, []string{"-t", "22"},
			func(c *Config) bool {
				return c.TCPFwd.Mode == FwdSpec && c.UDPFwd.Mode == FwdUnset && c.TCPNSFwd.Mode == FwdUnset
			}},
		{"options accumulate", ModePasst, []string{"-t", "22", "-t", "80,443"}, func(c *Config) bool { return len(c.TCPFwd.Rules) == 3 }},
		{"passt all", ModePasst, []string{"-t", "all"}, func(c *Config) bool { return reflect.DeepEqual(c.TCPFwd.Rules, nonEphemeral()) }},
		{"pasta auto", ModePasta, []string{"-t", "auto"}, func(c *Config) bool { return c.TCPFwd.Mode == FwdAuto }},
		{"none", ModePasta, []string{"-u", "none"}, func(c *Config) bool { return c.UDPFwd.Mode == FwdNone }},
		{"ports see later -4", ModePasta, []string{"-t", "22", "-4"}, func(c *Config) bool { return c.TCPFwd.Rules[0].Addr == any4 }},
		{"none with protocol disabled", ModePasta, []string{"--no-tcp", "-t", "none"}, func(c *Config) bool { return c.TCPFwd.Mode == FwdNone }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustParse(t, tt.mode, tt.args...)
			if !tt.check(c) {
				t.Errorf("Parse(%v, %q): unexpected result %+v", tt.mode, tt.args, c)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		mode Mode
		args []string
		want string
	}{
		// getopt level.
		{ModePasta, []string{"-x"}, "invalid option -- 'x'"},
		{ModePasta, []string{"-dx"}, "invalid option -- 'x'"},
		{ModePasta, []string{"--bogus"}, "unrecognized option '--bogus'"},
		{ModePasta, []string{"--bogus=1"}, "unrecognized option '--bogus'"},
		{ModePasta, []string{"--=1"}, "unrecognized option"},
		{ModePasta, []string{"--no-d"}, "option '--no-d' is ambiguous; possibilities:"},
		{ModePasta, []string{"--debug=1"}, "option '--debug' doesn't allow an argument"},
		{ModePasta, []string{"--fore=yes"}, "option '--foreground' doesn't allow an argument"},
		{ModePasta, []string{"-m"}, "option requires an argument -- 'm'"},
		{ModePasta, []string{"-dm"}, "option requires an argument -- 'm'"},
		{ModePasta, []string{"--mtu"}, "option '--mtu' requires an argument"},
		{ModePasta, []string{"-x", "-h"}, "invalid option"},

		// Mode specific options.
		{ModePasta, []string{"-s", "/tmp/s"}, "-s: only valid in passt mode"},
		{ModePasta, []string{"--socket=/tmp/s"}, "--socket: only valid in passt mode"},
		{ModePasta, []string{"-1"}, "-1: only valid in passt mode"},
		{ModePasta, []string{"-F", "3"}, "-F: only valid in passt mode"},
		{ModePasta, []string{"--no-dhcp-dns"}, "--no-dhcp-dns: only valid in passt mode"},
		{ModePasta, []string{"--no-dhcp-search"}, "only valid in passt mode"},
		{ModePasta, []string{"--vhost-user"}, "only valid in passt mode"},
		{ModePasta, []string{"--repair-path", "none"}, "only valid in passt mode"},
		{ModePasst, []string{"-I", "tap0"}, "-I: only valid in pasta mode"},
		{ModePasst, []string{"-T", "22"}, "-T: only valid in pasta mode"},
		{ModePasst, []string{"--udp-ns", "22"}, "--udp-ns: only valid in pasta mode"},
		{ModePasst, []string{"--netns", "x"}, "only valid in pasta mode"},
		{ModePasst, []string{"--userns", "x"}, "only valid in pasta mode"},
		{ModePasst, []string{"--netns-only"}, "only valid in pasta mode"},
		{ModePasst, []string{"--config-net"}, "only valid in pasta mode"},
		{ModePasst, []string{"--ns-mac-addr", "02:00:00:00:00:01"}, "only valid in pasta mode"},
		{ModePasst, []string{"--dhcp-dns"}, "only valid in pasta mode"},
		{ModePasst, []string{"--dhcp-search"}, "only valid in pasta mode"},
		{ModePasst, []string{"--no-netns-quit"}, "only valid in pasta mode"},
		{ModePasst, []string{"--splice-only"}, "only valid in pasta mode"},
		{ModePasst, []string{"--host-lo-to-ns-lo"}, "only valid in pasta mode"},
		{ModePasst, []string{"--no-copy-routes"}, "only valid in pasta mode"},

		// Operands.
		{ModePasst, []string{"foo"}, `invalid argument "foo": extra non-option argument`},
		{ModePasst, []string{"-d", "--", "-q"}, "extra non-option argument"},
		{ModePasta, []string{"--netns", "foo", "1234"}, "--netns: can't be given together with a PID or command"},
		{ModePasta, []string{"--netns", "foo", "sh"}, "can't be given together with a PID or command"},
		{ModePasta, []string{"0"}, `invalid argument "0": invalid PID`},
		{ModePasta, []string{"99999999999"}, "invalid PID"},
		{ModePasta, []string{"2147483648"}, "invalid PID"},

		// Values.
		{ModePasta, []string{"-m", "abc"}, `invalid argument "abc" for -m: not a number`},
		{ModePasta, []string{"--mtu", ""}, `invalid argument "" for --mtu: not a number`},
		{ModePasta, []string{"-m", "-1"}, "not a number"},
		{ModePasta, []string{"-m", " 1500"}, "not a number"},
		{ModePasta, []string{"-m", "1500x"}, "not a number"},
		{ModePasta, []string{"-m", "0x"}, "not a number"},
		{ModePasta, []string{"-m", "08"}, "not a number"},
		{ModePasta, []string{"-m", "65522"}, "MTU too large (maximum 65521)"},
		{ModePasta, []string{"-m", "99999999999999999999999"}, "out of range"},
		{ModePasta, []string{"--log-size", "1000"}, "smaller than the minimum"},
		{ModePasta, []string{"--log-size", "big"}, "not a number"},
		{ModePasta, []string{"--stats", "1"}, "--stats: statistics can only be displayed in foreground"},
		{ModePasta, []string{"-f", "--stats", "x"}, "not a number"},
		{ModePasta, []string{"-l", ""}, "empty path"},
		{ModePasta, []string{"-p", strings.Repeat("x", 4096)}, "path too long"},
		{ModePasst, []string{"-s", strings.Repeat("x", 108)}, "path too long"},
		{ModePasst, []string{"-F", "fd"}, "not a number"},
		{ModePasst, []string{"-F", "2147483648"}, "out of range"},
		{ModePasta, []string{"--runas", ""}, "expected UID"},
		{ModePasta, []string{"--runas", "1000:"}, "expected UID"},
		{ModePasta, []string{"-a", "foo"}, `invalid argument "foo" for -a: not an IPv4 or IPv6 address`},
		{ModePasta, []string{"-a", "192.0.2.1/33"}, "invalid prefix length"},
		{ModePasta, []string{"-a", "192.0.2.1/"}, "invalid prefix length"},
		{ModePasta, []string{"-a", "192.0.2.1/-1"}, "invalid prefix length"},
		{ModePasta, []string{"-a", "2001:db8::1/129"}, "invalid prefix length"},
		{ModePasta, []string{"-a", "::ffff:192.0.2.1/64"}, "invalid prefix length"},
		{ModePasta, []string{"-a", "[2001:db8::1"}, "missing ']'"},
		{ModePasta, []string{"-a", "[2001:db8::1]x"}, "unexpected"},
		{ModePasta, []string{"-a", "fe80::1%eth0"}, "not an IPv4 or IPv6 address"},
		{ModePasta, []string{"-a", "127.0.0.1"}, "loopback"},
		{ModePasta, []string{"-a", "::1"}, "loopback"},
		{ModePasta, []string{"-a", "0.0.0.0"}, "not a unicast address"},
		{ModePasta, []string{"-a", "224.0.0.1"}, "not a unicast address"},
		{ModePasta, []string{"-a", "255.255.255.255"}, "not a unicast address"},
		{ModePasta, []string{"-a", "ff02::1"}, "not a unicast address"},
		{ModePasta, []string{"-a", "192.0.2.1/24", "-n", "24"}, "redundant prefix length"},
		{ModePasta, []string{"-n", "24", "-a", "192.0.2.1/24"}, "redundant prefix length"},
		{ModePasta, []string{"-n", "33"}, "expected dotted decimal netmask"},
		{ModePasta, []string{"-n", "255.0.255.0"}, "not contiguous"},
		{ModePasta, []string{"-n", "mask"}, "expected dotted decimal netmask"},
		{ModePasta, []string{"-M", "zz"}, "not a MAC address"},
		{ModePasta, []string{"-M", "01:00:5e:00:00:01"}, "not a unicast MAC address"},
		{ModePasta, []string{"-M", "02:00:00:00:00:00:00:01"}, "not a MAC address"},
		{ModePasta, []string{"--ns-mac-addr", "ff:ff:ff:ff:ff:ff"}, "not a unicast MAC address"},
		{ModePasta, []string{"-g", "gw"}, "not an IPv4 or IPv6 address"},
		{ModePasta, []string{"-g", "127.0.0.1"}, "not a valid gateway address"},
		{ModePasta, []string{"-g", "::"}, "not a valid gateway address"},
		{ModePasta, []string{"-g", "255.255.255.255"}, "not a valid gateway address"},
		{ModePasta, []string{"-o", "::1"}, "not a valid outbound address"},
		{ModePasta, []string{"-o", "::ffff:192.0.2.1"}, "not a valid outbound address"},
		{ModePasta, []string{"-o", "::192.0.2.1"}, "not a valid outbound address"},
		{ModePasta, []string{"-o", "224.0.0.1"}, "not a valid outbound address"},
		{ModePasta, []string{"-o", "0.0.0.0"}, "not a valid outbound address"},
		{ModePasta, []string{"-i", ""}, "empty interface name"},
		{ModePasta, []string{"-i", "averyveryverylongname"}, "interface name too long"},
		{ModePasta, []string{"-I", "a/b"}, "invalid interface name"},
		{ModePasta, []string{"--outbound-if4", ".."}, "invalid interface name"},
		{ModePasta, []string{"--outbound-if6", "a b"}, "invalid interface name"},
		{ModePasta, []string{"-D", "dns.example"}, "not an IPv4 or IPv6 address"},
		{ModePasta, []string{"-D", "0.0.0.0"}, "unspecified address"},
		{ModePasta, []string{"-S", " "}, "empty search list"},
		{ModePasta, []string{"-S", "a b c d e", "-S", "f g"}, "too many search domains"},
		{ModePasta, []string{"-S", strings.Repeat("a", 254)}, "name too long"},
		{ModePasta, []string{"-H", ""}, "empty name"},
		{ModePasta, []string{"--map-host-loopback", "127.0.0.1"}, "address not usable here"},
		{ModePasta, []string{"--map-guest-addr", "::"}, "address not usable here"},
		{ModePasta, []string{"--dns-forward", "::1"}, "address not usable here"},
		{ModePasta, []string{"--dns-host", "0.0.0.0"}, "address not usable here"},
		{ModePasta, []string{"--netns", ""}, "invalid namespace name"},
		{ModePasta, []string{"--userns", ""}, "empty path"},

		// Combinations.
		{ModePasta, []string{"--host-lo-to-ns-lo", "--no-splice"}, "--host-lo-to-ns-lo: incompatible with --no-splice"},
		{ModePasta, []string{"--splice-only", "--no-splice"}, "incompatible with --no-splice"},
		{ModePasta, []string{"--no-copy-routes"}, "--no-copy-routes: needs --config-net"},
		{ModePasta, []string{"--no-copy-addrs"}, "--no-copy-addrs: needs --config-net"},
		{ModePasst, []string{"--repair-path", "/tmp/r"}, "--repair-path: only valid with --vhost-user"},
		{ModePasst, []string{"--migrate-exit"}, "only valid with --vhost-user"},
		{ModePasst, []string{"--migrate-no-linger"}, "only valid with --vhost-user"},

		// Port forwarding.
		{ModePasta, []string{"-u", "70000"}, `invalid port specification "70000" for -u: port out of range`},
		{ModePasst, []string{"-t", "auto"}, `invalid port specification "auto" for -t: 'auto' is only allowed in pasta mode`},
		{ModePasta, []string{"--no-udp", "-u", "53"}, "UDP is disabled"},
		{ModePasta, []string{"-u", "53", "--no-udp"}, "UDP is disabled"},
		{ModePasta, []string{"-4", "-t", "::1/22"}, "IPv6 is disabled"},
		{ModePasta, []string{"-T", "127.0.0.1/22"}, "not allowed for -T"},
		{ModePasta, []string{"-t", "22", "-t", "none"}, "specific ports cannot be specified together with all/none/auto"},
		{ModePasta, []string{"-t", "auto", "-t", "none"}, "'none' conflicts with previous -t options"},
		{ModePasta, []string{"-t", "22", "-t", "20-30"}, "overlaps"},
		{ModePasta, []string{"-t", "auto", "-t", "22"}, "overlaps"},

		// "none" and ports for the same option, in either order.
		{ModePasta, []string{"-u", "none", "-u", "15353"}, `invalid port specification "15353" for -u: specific ports cannot be specified together with all/none/auto`},
		{ModePasta, []string{"-u", "15353", "-u", "none"}, `invalid port specification "none" for -u: specific ports cannot be specified together with all/none/auto`},
		{ModePasta, []string{"-t", "none", "-t", "8080:80"}, "-t: specific ports cannot be specified together with all/none/auto"},
		{ModePasta, []string{"-t", "8080:80", "-t", "none"}, "-t: specific ports cannot be specified together with all/none/auto"},
		{ModePasta, []string{"-T", "none", "-T", "5432"}, "-T: specific ports cannot be specified together with all/none/auto"},
		{ModePasta, []string{"-T", "5432", "-T", "none"}, "-T: specific ports cannot be specified together with all/none/auto"},
		{ModePasta, []string{"-U", "none", "-U", "53"}, "-U: specific ports cannot be specified together with all/none/auto"},
		{ModePasta, []string{"-U", "53", "-U", "none"}, "-U: specific ports cannot be specified together with all/none/auto"},
		{ModePasst, []string{"-u", "none", "-u", "15353"}, "-u: specific ports cannot be specified together with all/none/auto"},
		{ModePasst, []string{"-t", "22", "-t", "none"}, "-t: specific ports cannot be specified together with all/none/auto"},
		{ModePasta, []string{"-t", "none", "-t", "auto"}, "conflicts with previous -t none"},
		// The same, with the options apart and the long names.
		{ModePasta, []string{"--udp-ports=none", "-d", "--udp-ports", "15353"}, "-u: specific ports cannot be specified together with all/none/auto"},

		// "all" is for passt.
		{ModePasta, []string{"-u", "all"}, `invalid port specification "all" for -u: 'all' port forwarding is only allowed for passt`},
		{ModePasta, []string{"-t", "all"}, "-t: 'all' port forwarding is only allowed for passt"},
		{ModePasta, []string{"-T", "all"}, "-T: 'all' port forwarding is only allowed for passt"},
		{ModePasta, []string{"-U", "all"}, "-U: 'all' port forwarding is only allowed for passt"},
		{ModePasta, []string{"-t", "127.0.0.1/all"}, "'all' port forwarding is only allowed for passt"},

		// MTUs too small.
		{ModePasta, []string{"--config-net", "-m", "68"}, "-m: MTU 68 is too small for IPv6 (minimum 1280), give -4 for IPv4 only"},
		{ModePasta, []string{"--config-net", "-m", "1279"}, "-m: MTU 1279 is too small for IPv6 (minimum 1280)"},
		{ModePasta, []string{"--config-net", "-6", "-m", "576"}, "-m: MTU 576 is too small for IPv6 (minimum 1280)"},
		{ModePasta, []string{"-m", "67"}, "-m: MTU 67 is too small for IPv4 (minimum 68)"},
		{ModePasta, []string{"-4", "--config-net", "-m", "67"}, "-m: MTU 67 is too small for IPv4 (minimum 68)"},
		{ModePasta, []string{"-6", "-m", "60"}, "-m: MTU 60 is too small for IPv6 (minimum 1280)"},
		{ModePasst, []string{"-m", "1"}, "-m: MTU 1 is too small for IPv4 (minimum 68)"},
		{ModePasst, []string{"-m", "67"}, "-m: MTU 67 is too small for IPv4 (minimum 68)"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			c, err := parse(tt.mode, tt.args...)
			if err == nil {
				t.Fatalf("Parse(%v, %q) succeeded: %+v", tt.mode, tt.args, c)
			}
			if c != nil {
				t.Errorf("Config returned with error")
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.want) {
				t.Errorf("error %q does not contain %q", msg, tt.want)
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("error %q is not one line", msg)
			}
		})
	}
}

// TestErrorsOneLine feeds values with line breaks to every option that
// takes an argument.
func TestErrorsOneLine(t *testing.T) {
	for _, mode := range []Mode{ModePasta, ModePasst} {
		for _, o := range optionTable {
			if !o.hasArg || !o.modes.has(mode) {
				continue
			}
			for _, v := range []string{"x\ny", "1\n", "\n"} {
				_, err := parse(mode, "--"+o.long[0], v)
				if err != nil && strings.Contains(err.Error(), "\n") {
					t.Errorf("%v --%s %q: multi-line error %q", mode, o.long[0], v, err)
				}
			}
		}
	}
}

func TestHelpAndVersion(t *testing.T) {
	tests := []struct {
		args []string
		want error
	}{
		{[]string{"-h"}, ErrHelp},
		{[]string{"--help"}, ErrHelp},
		{[]string{"--he"}, ErrHelp},
		{[]string{"-dh"}, ErrHelp},
		{[]string{"-h", "--bogus"}, ErrHelp},
		{[]string{"--version"}, ErrVersion},
		{[]string{"--vers"}, ErrVersion},
		{[]string{"-m", "1500", "--version", "-x"}, ErrVersion},
	}
	for _, mode := range []Mode{ModePasta, ModePasst} {
		for _, tt := range tests {
			c, err := parse(mode, tt.args...)
			if !errors.Is(err, tt.want) || c != nil {
				t.Errorf("Parse(%v, %q) = %v, %v; want %v", mode, tt.args, c, err, tt.want)
			}
		}
	}
}

func TestEphemeralInjection(t *testing.T) {
	p := &Parser{Mode: ModePasst, EphemeralRange: func() (PortRange, error) { return PortRange{1024, 65535}, nil }}
	c, err := p.Parse([]string{"-t", "all"})
	if err != nil {
		t.Fatal(err)
	}
	if want := rules(r(1, 1023).weak()); !reflect.DeepEqual(c.TCPFwd.Rules, want) {
		t.Errorf("Rules = %v, want %v", c.TCPFwd.Rules, want)
	}

	called := false
	p.EphemeralRange = func() (PortRange, error) { called = true; return PortRange{}, errors.New("no procfs") }
	c, err = p.Parse([]string{"-t", "all"})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c.TCPFwd.Rules, nonEphemeral()) {
		t.Errorf("fallback Rules = %v", c.TCPFwd.Rules)
	}
	if len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0], "no procfs") {
		t.Errorf("Warnings = %q", c.Warnings)
	}

	// Not consulted without port options.
	called = false
	if _, err := p.Parse([]string{"-d"}); err != nil || called {
		t.Errorf("Parse without ports: err %v, range read %v", err, called)
	}
}

func TestApplyForwardDefaults(t *testing.T) {
	c := mustParse(t, ModePasta, "-t", "22", "--no-udp")
	if err := c.ApplyForwardDefaults(PortRange{}); err != nil {
		t.Fatal(err)
	}
	if c.TCPFwd.Mode != FwdSpec || len(c.TCPFwd.Rules) != 1 {
		t.Errorf("given -t changed: %+v", c.TCPFwd)
	}
	if c.TCPNSFwd.Mode != FwdAuto || !reflect.DeepEqual(c.TCPNSFwd.AutoRules, nonEphemeral()) {
		t.Errorf("-T default: %+v", c.TCPNSFwd)
	}
	if c.UDPFwd.Mode != FwdNone || c.UDPNSFwd.Mode != FwdNone {
		t.Errorf("UDP disabled but defaults %v %v", c.UDPFwd.Mode, c.UDPNSFwd.Mode)
	}

	c = mustParse(t, ModePasst, "-u", "53")
	if err := c.ApplyForwardDefaults(PortRange{}); err != nil {
		t.Fatal(err)
	}
	if c.TCPFwd.Mode != FwdNone || c.UDPFwd.Mode != FwdSpec || c.TCPNSFwd.Mode != FwdNone {
		t.Errorf("passt defaults: %v %v %v", c.TCPFwd.Mode, c.UDPFwd.Mode, c.TCPNSFwd.Mode)
	}
}

func TestUsage(t *testing.T) {
	for _, mode := range []Mode{ModePasta, ModePasst} {
		u := Usage(mode)
		if !strings.HasPrefix(u, "Usage: "+mode.String()) {
			t.Errorf("%v usage starts %q", mode, u[:20])
		}
		for _, ph := range []string{"%GUEST%", "%FWD%", "%AUTO%", "%AUTOEX%", "%ALL%", "%ALLEX%"} {
			if strings.Contains(u, ph) {
				t.Errorf("%v usage has unreplaced placeholder %s", mode, ph)
			}
		}
		for _, o := range optionTable {
			for _, l := range o.long {
				// Each option is listed at the start of a line.
				listed := strings.Contains(u, "--"+l+" ") || strings.Contains(u, "--"+l+",") ||
					strings.Contains(u, "--"+l+"\n")
				if listed != o.modes.has(mode) {
					t.Errorf("%v usage: --%s listed %v, valid %v", mode, l, listed, o.modes.has(mode))
				}
			}
			if o.short != 0 {
				listed := strings.Contains(u, "\n  -"+string(o.short)+", ")
				if listed != o.modes.has(mode) {
					t.Errorf("%v usage: -%c listed %v, valid %v", mode, o.short, listed, o.modes.has(mode))
				}
			}
		}
		for i, line := range strings.Split(u, "\n") {
			if len(line) > 80 {
				t.Errorf("%v usage line %d too long: %q", mode, i+1, line)
			}
		}
	}
	if !strings.Contains(Usage(ModePasta), "auto") || strings.Contains(Usage(ModePasst), "-t auto") {
		t.Error("'auto' help in the wrong mode")
	}
}

// TestOptionTable checks the table for duplicate names and missing help.
func TestOptionTable(t *testing.T) {
	seen := map[string]bool{}
	for _, o := range optionTable {
		names := slices.Clone(o.long)
		if o.short != 0 {
			names = append(names, string(o.short))
		}
		for _, n := range names {
			if seen[n] {
				t.Errorf("duplicate option name %q", n)
			}
			seen[n] = true
		}
		if o.help == "" || o.apply == nil || o.modes == 0 || len(o.long) == 0 || o.hasArg != (o.arg != "") {
			t.Errorf("incomplete option %v", o.long)
		}
	}
	// Every short option of the reference's optstring is present.
	for _, c := range "dqfelhscFIpPmanMgioDSH461tuTU" {
		if !seen[string(c)] {
			t.Errorf("short option -%c missing", c)
		}
	}
}

func TestModeString(t *testing.T) {
	if ModePasta.String() != "pasta" || ModePasst.String() != "passt" || Mode(7).String() != "Mode(7)" {
		t.Error("Mode.String")
	}
	if _, err := Parse(Mode(7), nil); err == nil {
		t.Error("unknown mode accepted")
	}
}

// FuzzParse checks that Parse never panics and errors are one line.
func FuzzParse(f *testing.F) {
	f.Add("-dq\x00-u5000\x00--netns\x00foo", true)
	f.Add("--mtu=0x5dc\x00-a\x00192.0.2.1/24\x00--\x00sh", false)
	f.Add("-t\x00all\x00-F\x003\x00-s\x00x", false)
	f.Fuzz(func(t *testing.T, joined string, pasta bool) {
		mode := ModePasst
		if pasta {
			mode = ModePasta
		}
		_, err := parse(mode, strings.Split(joined, "\x00")...)
		if err != nil && strings.Contains(err.Error(), "\n") {
			t.Errorf("multi-line error %q", err)
		}
	})
}
