package netns

import (
	"errors"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// TunDevice is the tun/tap clone device.
const TunDevice = "/dev/net/tun"

// CreateTap creates a tap interface (IFF_TAP|IFF_NO_PI: plain Ethernet frames,
// no packet information header) called name inside the namespace, sets its MTU
// if mtu > 0 and its MAC address if mac is not nil, and returns the tap file
// descriptor (O_NONBLOCK, O_CLOEXEC) and the interface index in the
// namespace.
//
// The device is bound to the namespace it was created in, but the descriptor
// is an ordinary file: reading and writing it works from any thread in any
// namespace. Closing the descriptor removes the interface, as does the
// namespace going away. name must be at most IFNAMSIZ-1 (15) bytes; if empty,
// the kernel picks a "tapN" name. The link is left down: see Configure.
//
// With vnet, the device is opened with IFF_VNET_HDR: every frame carries a
// virtio-net header (see tap.NewVnetDevice).
func (n *NS) CreateTap(name string, mtu int, mac net.HardwareAddr, vnet bool) (fd int, ifindex int, err error) {
	if len(name) > unix.IFNAMSIZ-1 {
		return -1, 0, fmt.Errorf("netns: interface name %q longer than %d bytes", name, unix.IFNAMSIZ-1)
	}
	if mac != nil && len(mac) != 6 {
		return -1, 0, fmt.Errorf("netns: invalid Ethernet address %v", mac)
	}

	fd = -1
	err = n.Do(func() error {
		tfd, err := unix.Open(TunDevice, unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open %s: %w", TunDevice, err)
		}
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			unix.Close(tfd)
			return err
		}
		flags := uint16(unix.IFF_TAP | unix.IFF_NO_PI)
		if vnet {
			flags |= unix.IFF_VNET_HDR
		}
		ifr.SetUint16(flags)
		if err := unix.IoctlIfreq(tfd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(tfd)
			return fmt.Errorf("TUNSETIFF %q: %w", name, err)
		}
		fd = tfd
		name = ifr.Name() // the kernel fills it in when it picked the name
		return nil
	})
	if err != nil {
		return -1, 0, fmt.Errorf("netns: creating tap in %s: %w", n.path, err)
	}

	ifindex, err = n.setupTapLink(name, mtu, mac)
	if err != nil {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("netns: setting up tap %q in %s: %w", name, n.path, err)
	}
	return fd, ifindex, nil
}

// setupTapLink looks up the new interface and applies MTU and MAC.
func (n *NS) setupTapLink(name string, mtu int, mac net.HardwareAddr) (int, error) {
	h, err := n.NetlinkHandle()
	if err != nil {
		return 0, err
	}
	defer h.Close()

	link, err := h.LinkByName(name)
	if err != nil {
		return 0, fmt.Errorf("tap device created but no interface found: %w", err)
	}
	var errs []error
	if mtu > 0 && link.Attrs().MTU != mtu {
		if err := h.LinkSetMTU(link, mtu); err != nil {
			errs = append(errs, fmt.Errorf("MTU %d: %w", mtu, err))
		}
	}
	if mac != nil {
		if err := h.LinkSetHardwareAddr(link, mac); err != nil {
			errs = append(errs, fmt.Errorf("MAC %v: %w", mac, err))
		}
	}
	return link.Attrs().Index, errors.Join(errs...)
}

// LinkMAC returns the MAC address of interface ifname in the namespace, as
// the reference does to learn the address the kernel picked for the tap when
// none was configured.
func (n *NS) LinkMAC(ifname string) (net.HardwareAddr, error) {
	h, err := n.NetlinkHandle()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	link, err := h.LinkByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("netns: %s in %s: %w", ifname, n.path, err)
	}
	return link.Attrs().HardwareAddr, nil
}
