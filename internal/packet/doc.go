// Package packet holds zero-allocation views over the bytes of Ethernet
// frames and the IP and UDP headers inside them, the Internet checksum, and
// writers that build headers in place.
//
// # Theory of operation
//
// Frames arrive from the guest as byte slices owned by the caller. [Parse]
// walks them once, bounds-checking every length field against the bytes
// actually present, and fills a caller-provided [Parsed] with slices that
// alias the frame: nothing is copied and nothing escapes to the heap. A frame
// that fails a check is not an error to propagate but a [Drop] reason to
// count; the caller drops it and goes on.
//
// In the other direction the UDP payload received from a host socket is
// placed in a buffer at [MaxHeadroom] bytes from its start, and the headers
// are written immediately in front of it by [PutUDP4] or [PutUDP6], so a
// payload is never moved to make room for headers.
//
// Checksums are computed by [Sum], which folds 64-bit loads into a 64-bit
// accumulator in host byte order; one's complement arithmetic is byte-order
// independent up to a final swap (RFC 1071, section 2), so the per-byte cost
// stays low without unsafe code.
package packet
