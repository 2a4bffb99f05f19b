// Package protocols lists the transport protocols gopasst serves and
// starts each on the engine's core: the one place that knows both. The
// core (packages engine, evloop, flow, fwd, toguest) and the modes
// (packages pasta and passt) import no protocol; the command hands them
// [All].
package protocols

import (
	"github.com/gopasst/gopasst/internal/conf"
	"github.com/gopasst/gopasst/internal/engine"
	"github.com/gopasst/gopasst/internal/fwd"
	"github.com/gopasst/gopasst/internal/icmp"
	"github.com/gopasst/gopasst/internal/packet"
	"github.com/gopasst/gopasst/internal/tcp"
	"github.com/gopasst/gopasst/internal/udp"
)

// All are the protocols gopasst serves, as engine.Build takes them.
var All = []engine.Protocol{UDP, TCP, ICMP}

// UDP is UDP translation (package udp), off with --no-udp.
var UDP = engine.Protocol{
	Name:     "UDP",
	IPProtos: []uint8{packet.ProtoUDP},
	Forwards: fwd.UDP,
	Off:      func(c *conf.Config) bool { return c.NoUDP },
	New: func(env *engine.Env) (engine.Handler, error) {
		return udp.New(udp.Config{Rules: env.Rules, Guest: env.Guest, Loop: env.Loop, Flows: env.Flows,
			Out: env.LoopOut, Stats: env.Stats, Forwards: env.Forwards,
			Timeout: env.Net.Timeout, StreamTimeout: env.Net.StreamTimeout,
			NSSocket: env.NSSocket, Offload: !env.Conf.NoOffload})
	},
}

// ICMP is ICMP and ICMPv6 echo through ping sockets (package icmp), off
// with --no-icmp.
var ICMP = engine.Protocol{
	Name:     "ICMP",
	IPProtos: []uint8{packet.ProtoICMP, packet.ProtoICMPv6},
	Off:      func(c *conf.Config) bool { return c.NoICMP },
	New: func(env *engine.Env) (engine.Handler, error) {
		return icmp.New(icmp.Config{Rules: env.Rules, Guest: env.Guest, Loop: env.Loop, Flows: env.Flows,
			Out: env.LoopOut, Stats: env.Stats}), nil
	},
}

// TCP is TCP translation (package tcp), off with --no-tcp.
var TCP = engine.Protocol{
	Name:     "TCP",
	IPProtos: []uint8{packet.ProtoTCP},
	Forwards: fwd.TCP,
	Off:      func(c *conf.Config) bool { return c.NoTCP },
	New: func(env *engine.Env) (engine.Handler, error) {
		return tcp.New(tcp.Config{Rules: env.Rules, Guest: env.Guest, Loop: env.Loop, Flows: env.Flows,
			LoopOut: env.LoopOut, TapOut: env.TapOut, Stats: env.Stats, Forwards: env.Forwards, MTU: env.Conf.MTU,
			NSSocket: env.NSSocket})
	},
}
