// Package dhcp is gopasst's DHCP (RFC 2131) and DHCPv6 (RFC 8415) server
// for the guest: it hands out the single address the guest is meant to
// use, together with the gateway, resolvers, search domains, MTU and names
// copied from the host.
//
// # Theory of operation
//
// There is exactly one client on the guest's link and exactly one address
// for it per family, so the servers keep no lease state at all: every
// answer is computed from [Config] and the request alone, and [Server.Handle]
// is safe for concurrent use. Leases never expire (lease time, T1, T2 and
// lifetimes are all "infinity"), so a well-behaved guest asks once and
// never renews. Messages are decoded and encoded with
// github.com/insomniacslk/dhcp; the decisions follow passt's dhcp.c and
// dhcpv6.c.
//
// DHCPv4. Any UDP datagram to port 67 is ours ([IsRequest]); replies come
// from Gateway4:67 (also the server identifier) and go to port 68, to the
// broadcast address when the client set the BROADCAST flag, otherwise to
// the assigned address, in a frame addressed to the MAC address the request
// came from. DISCOVER is answered with OFFER, or with ACK when it carries
// Rapid Commit (RFC 4039); REQUEST in any state (selecting, init-reboot,
// renewing, rebinding) and BOOTP requests without a message type are
// answered with ACK for our address, whatever address the client asked for:
// there is nothing else to offer it, and clients take yiaddr from the ACK.
// DECLINE, RELEASE, INFORM and anything else are swallowed without an
// answer. Options: message type first (some DOS-era clients insist),
// then those listed in the client's parameter request list in its order,
// then the rest by number, dropping what no longer fits in the 308 bytes of
// a minimum-size (576-byte) message; the reply is padded to the 300 bytes
// of a BOOTP message. A classless static route (option 121) to the gateway
// is added when the gateway lies outside the assigned subnet. The search
// list (option 119) uses RFC 1035 compression across names.
//
// DHCPv6. Any UDP datagram to port 547 is ours; only those sent to a
// multicast address (normally ff02::1:2) are answered, from OurLinkLocal6
// port 547 to the client's source address port 546, hop limit 255, flow
// label taken from the transaction ID. The server identifier is a DUID-LLT
// built from OurMAC and the time New was called. SOLICIT gets ADVERTISE
// (Rapid Commit is not honoured); REQUEST, RENEW, REBIND and CONFIRM get
// REPLY; if the client sent an IA_NA, the answer has one with the same
// IAID holding Addr6 (only the first IA_NA is answered); a REQUEST, RENEW
// or CONFIRM naming any other address in an IA gets REPLY with that IA
// carrying status NotOnLink, so the client starts over with SOLICIT;
// INFORMATION-REQUEST gets REPLY with configuration options only. Every
// reply carries the server identifier, the client's identifier echoed
// byte for byte, and the DNS servers (23), domain list (24) and client FQDN
// (39) options when configured. Messages with a missing or oversized
// client identifier, or with a server identifier where none is allowed or
// naming another server, are dropped, as are RELEASE and DECLINE.
package dhcp
