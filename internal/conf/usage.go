package conf

import (
	"strings"
)

// helpColumn is where option descriptions start in the help text.
const helpColumn = 26

// Usage returns the help text for mode, listing every option it accepts.
func Usage(mode Mode) string {
	var b strings.Builder
	name := mode.String()
	guest, fwd := "guest", "none"
	auto, autoEx := "", ""
	all, allEx := allHelp, allExamples
	if mode == ModePasta {
		guest, fwd = "namespace", "auto"
		auto, autoEx = autoHelp, autoExamples
		all, allEx = "", ""
		b.WriteString("Usage: " + name + " [OPTION]... [COMMAND [ARG]...]\n")
		b.WriteString("       " + name + " [OPTION]... PID\n")
		b.WriteString("       " + name + " [OPTION]... --netns [PATH|NAME]\n\n")
		b.WriteString("Without PID or --netns, run COMMAND (default: a shell) in a new\n")
		b.WriteString("network and user namespace, connected via pasta.\n\n")
	} else {
		b.WriteString("Usage: " + name + " [OPTION]...\n\n")
	}
	subst := strings.NewReplacer("%GUEST%", guest, "%FWD%", fwd, "%AUTO%", auto, "%AUTOEX%", autoEx,
		"%ALL%", all, "%ALLEX%", allEx)

	for _, o := range optionTable {
		if !o.modes.has(mode) {
			continue
		}
		head := "  "
		if o.short != 0 {
			head += "-" + string(o.short)
			if len(o.long) > 0 {
				head += ", "
			}
		} else {
			head += "    "
		}
		for i, l := range o.long {
			if i > 0 {
				head += ", "
			}
			head += "--" + l
		}
		if o.hasArg {
			head += " " + o.arg
		}
		lines := strings.Split(subst.Replace(o.help), "\n")
		b.WriteString(head)
		if len(head) < helpColumn {
			b.WriteString(strings.Repeat(" ", helpColumn-len(head)))
		} else {
			b.WriteString("\n" + strings.Repeat(" ", helpColumn))
		}
		b.WriteString(lines[0] + "\n")
		for _, l := range lines[1:] {
			b.WriteString(strings.Repeat(" ", helpColumn) + l + "\n")
		}
	}
	return b.String()
}
