// Package conf parses the command lines of pasta and passt into a [Config],
// including the port forwarding specifications of -t, -u, -T and -U.
//
// # Theory of operation
//
// Parsing is pure: [Parse] looks at its arguments only, never at the host's
// interfaces, routes or users, so that everything it does can be tested with
// tables. The one piece of host state it needs, the ephemeral port range
// that "all" leaves out, comes through [Parser.EphemeralRange], which
// defaults to [SystemEphemeralRange].
//
// Arguments are split into options by a small scanner with the semantics of
// getopt_long(3) with a "+" optstring, as used by the reference: clustered
// short options ("-dq"), attached or separate short option arguments ("-u5000",
// "-u 5000"), "--name=value" or "--name value" long options, long names
// abbreviated to any unambiguous prefix, and the end of options at "--" or
// at the first argument that is not an option. What follows is, for pasta,
// a PID if it is a single all-digit argument and otherwise a command to run;
// passt accepts nothing there.
//
// Every option is a row in one table that gives its names, whether it takes
// an argument, the modes accepting it, its help text (from which [Usage] is
// generated) and a function applying it to the Config. Options are applied
// in command line order, so that, as in the reference, the last of
// conflicting options wins (-d and -q, -4 and -6, two -a of the same
// family). Checks involving several options, and the implications the
// reference applies unconditionally (--no-icmp implies --no-ndp, and so on),
// run once all options are seen. Errors are one line, name the option as it
// was given and quote the offending value; see [OptionError] and
// [SpecError].
//
// Port forwarding options are only collected during that pass and
// interpreted afterwards, in order, because their meaning depends on other
// options: -4 and -6 restrict the address families rules may use, --no-tcp
// and --no-udp forbid rules. Each one is handled by [Forward.AddSpec] in two
// steps. A recursive descent parser first checks the syntax, left to right,
// with a cursor that only advances on success: an optional listening
// "ADDR%IFNAME/" prefix (recognised only if it ends with '/', since target
// addresses may contain '/' too), then comma-separated chunks, each an
// include range with an optional target, an exclusion, "all" or "auto".
// The chunks are then interpreted as a whole, since their order does not
// matter: exclusions are collected in a port bitmap first, include ranges
// are split around them, and "all" (implied when there are no include
// ranges) adds every port outside the ephemeral range that is neither
// excluded nor explicitly included. If "auto" appears, the resulting rules
// are automatic ones, active only while the port is bound on the other side.
// Finally every new rule is checked against the rules already in the
// [Forward] and the ones before it: two rules with overlapping port ranges
// conflict unless their listening addresses are distinct (the wildcard
// overlaps everything), and a conflict is an error. Either all rules of a
// specification are added or none is.
//
// Parse leaves a direction that no option configured in FwdUnset;
// [Config.ApplyForwardDefaults] applies the mode's default.
package conf
