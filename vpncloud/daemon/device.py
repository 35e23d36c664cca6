"""TUN/TAP device and kernel routes (spec 12).

The device is opened with the ``TUNSETIFF`` ioctl on ``/dev/net/tun`` (``IFF_NO_PI``, so every read is
exactly one IP packet or Ethernet frame). Address, MTU, link state and routes go through rtnetlink
(:mod:`.netlink`) instead of the original's SIOCSIF* ioctls: same effect, and IPv6 works too.

The device is not persistent: closing the fd removes the interface and its routes, so a killed
process leaves nothing behind.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import struct
from collections.abc import Iterable

from vpncloud.core.types import Range, SocketAddr, format_sockaddr, nice

from . import netlink
from .logs import get_logger
from .netlink import NetlinkError, Rtnl

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFNAMSIZ = 16
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40
#: Offload sets tried in order (USO needs Linux >= 6.2).
OFFLOAD_CHOICES = (
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6,
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6,
)
#: Largest read: the virtio header, an Ethernet header with two VLAN tags (TAP) and a 64 KB
#: super-packet (gso_max_size keeps them smaller, but an old kernel may not take that setting).
READ_SIZE = 10 + 22 + 65535

#: Bytes of outer headers the tunnel adds (IPv6 40 + UDP 8 + crypto header 8 + tag 16 + type 1),
#: plus 14 for the Ethernet header of a TAP frame (spec 12 step 3).
OVERHEAD_TUN = 73
OVERHEAD_TAP = 87
CVE_URL = "https://vpncloud.ddswd.de/docs/security/cve-2019-14899/"

log = get_logger()


class DeviceError(Exception):
    """The device could not be created or configured."""


class Device:
    """An open TUN or TAP interface. ``read``/``write_raw`` move one packet/frame each.

    With ``offload=True`` the device is opened with ``IFF_VNET_HDR`` and asked for
    checksum/TSO/USO offloads (``TUNSETOFFLOAD``). Then ``vnet`` is True and every ``read_raw`` returns
    a 10-byte virtio-net header plus a packet (TUN) or Ethernet frame (TAP) of up to 64 KB, and
    ``write_raw`` takes the same; the plain ``read`` is not used in that mode. When the kernel
    refuses any of it the device silently falls back to the plain per-packet mode.
    """

    def __init__(self, fd: int, ifname: str, device_type: str, vnet: bool = False, offloads: int = 0) -> None:
        self.fd = fd
        self.ifname = ifname
        self.device_type = device_type
        self.vnet = vnet
        self.offloads = offloads

    @classmethod
    def open(
        cls, device_type: str, name: str = "vpncloud%d", path: str | None = None, *, offload: bool = False
    ) -> Device:
        """Create the interface (``%d`` in ``name`` is filled in by the kernel)."""
        if offload:
            kind = device_type.upper()
            try:
                dev = cls._open(device_type, name, path, IFF_VNET_HDR)
            except DeviceError as exc:
                log.info("%s offloads not available (%s); using one packet per read", kind, exc)
            else:
                for choice in OFFLOAD_CHOICES:
                    try:
                        fcntl.ioctl(dev.fd, TUNSETOFFLOAD, choice)
                    except OSError:
                        continue
                    dev.vnet = True
                    dev.offloads = choice
                    return dev
                log.info("%s offloads refused by the kernel; using one packet per read", kind)
                dev.close()
        return cls._open(device_type, name, path, 0)

    @classmethod
    def _open(cls, device_type: str, name: str, path: str | None, extra: int) -> Device:
        raw = name.encode()
        if len(raw) >= IFNAMSIZ:
            raise DeviceError(f"Failed to open virtual {device_type} interface {name}: name too long")
        flags = (IFF_TUN if device_type == "tun" else IFF_TAP) | IFF_NO_PI | extra
        try:
            fd = os.open(path or "/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            what = f"Failed to open virtual {device_type} interface {name}"
            raise DeviceError(f"{what}: {exc.strerror} ({path or '/dev/net/tun'})") from None
        try:
            result = fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", raw, flags))
        except OSError as exc:
            os.close(fd)
            raise DeviceError(
                f"Failed to open virtual {device_type} interface {name}: {exc.strerror}"
            ) from None
        ifname = result[:IFNAMSIZ].split(b"\0", 1)[0].decode()
        os.set_blocking(fd, False)
        return cls(fd, ifname, device_type)

    def fileno(self) -> int:
        """The fd to register with the selector."""
        return self.fd

    def read(self) -> bytes | None:
        """One packet/frame, or None when nothing is waiting (non-blocking)."""
        return self.read_raw(65535)

    def read_raw(self, size: int = READ_SIZE) -> bytes | None:
        """Offload mode: virtio header + packet (up to 64 KB), or None when nothing is waiting."""
        try:
            return os.read(self.fd, size)
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EINTR):
                return None
            raise

    def write_raw(self, data: bytes | memoryview) -> None:
        """Write as given (in offload mode: virtio header + packet); errors are drops."""
        try:
            os.write(self.fd, data)
        except BlockingIOError:
            log.debug("Device %s busy, dropping packet", self.ifname)
        except OSError as exc:
            log.debug("Device %s rejected a packet of %d bytes: %s", self.ifname, len(data), exc.strerror)

    def close(self) -> None:
        """Close the fd, which removes the (non-persistent) interface."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # --- configuration through netlink -----------------------------------------------------------

    def get_mtu(self) -> int:
        """Current MTU."""
        return read_mtu(self.ifname)

    def set_mtu(self, mtu: int) -> None:
        """Set the interface MTU."""
        with Rtnl() as nl:
            nl.link_set(self.ifname, mtu=mtu)

    def set_ip(self, addr: str, prefix: int) -> None:
        """Add an IPv4 address with its netmask and bring the interface up (spec 12 step 4)."""
        with Rtnl() as nl:
            nl.addr_add(self.ifname, addr, prefix)
            nl.link_set(self.ifname, up=True)

    def up(self) -> None:
        """Bring the interface up."""
        with Rtnl() as nl:
            nl.link_set(self.ifname, up=True)

    def set_gso_max_size(self, size: int) -> None:
        """Cap the size of super-packets the kernel hands us (so one fits one UDP GSO send)."""
        with Rtnl() as nl:
            nl.link_set(self.ifname, gso_max_size=size)

    def get_ipv4(self) -> str | None:
        """The first IPv4 address on the interface (for auto-claim), or None."""
        with Rtnl() as nl:
            found = nl.ipv4_addresses(self.ifname)
        return found[0] if found else None


def read_mtu(ifname: str) -> int:
    """MTU of an interface from sysfs."""
    with open(f"/sys/class/net/{ifname}/mtu") as fh:
        return int(fh.read().strip())


def default_interface(route_file: str = "/proc/net/route") -> str | None:
    """The original's choice (spec 12 step 3): first default route, else last line with a gateway."""
    try:
        with open(route_file) as fh:
            lines = fh.read().splitlines()[1:]
    except OSError:
        return None
    last_gw = None
    for line in lines:
        cols = line.split()
        if len(cols) < 3:
            continue
        if cols[1] == "00000000":
            return cols[0]
        if cols[2] != "00000000":
            last_gw = cols[0]
    return last_gw


def default_mtu() -> int | None:
    """MTU of the default route's interface, or None if there is none."""
    ifname = default_interface()
    if ifname is None:
        return None
    try:
        return read_mtu(ifname)
    except (OSError, ValueError):
        return None


def route_interfaces(
    route_file: str = "/proc/net/route", route6_file: str = "/proc/net/ipv6_route"
) -> list[str]:
    """Interfaces that carry any IPv4 or IPv6 route, loopback left out, in table order."""
    names: list[str] = []
    for path, col in ((route_file, 0), (route6_file, -1)):
        try:
            with open(path) as fh:
                lines = fh.read().splitlines()
        except OSError:
            continue
        for line in lines[1:] if col == 0 else lines:
            cols = line.split()
            if cols and cols[col] not in names and cols[col] != "lo" and cols[col] != "Iface":
                names.append(cols[col])
    return names


def underlay_mtu(exclude: str) -> tuple[str, int] | None:
    """Without a default route (issue 24): the smallest MTU of the interfaces that carry routes
    (the peers must be behind one of them), the VPN device itself left out."""
    best: tuple[str, int] | None = None
    for name in route_interfaces():
        if name == exclude:
            continue
        try:
            mtu = read_mtu(name)
        except (OSError, ValueError):
            continue
        if best is None or mtu < best[1]:
            best = (name, mtu)
    return best


def setup_mtu(device: Device) -> None:
    """Set MTU = uplink MTU - overhead; errors are only logged (spec 12 step 3).

    The original only looks at the default route and otherwise keeps 1500 silently: the datagrams
    of full-size packets then exceed the underlay's MTU, every one is refused with EMSGSIZE and TCP
    through the tunnel crawls. We fall back to the interfaces that carry routes, and say so."""
    base = default_mtu()
    if base is None:
        found = underlay_mtu(device.ifname)
        if found is None:
            log.warning(
                "No default route and no routed interface found: keeping MTU %s on %s; packets whose "
                "datagrams exceed the underlay MTU will be dropped (set the MTU, e.g. in ifup)",
                _safe_mtu(device),
                device.ifname,
            )
            return
        log.warning(
            "No default route: taking the MTU of %s (%d) as the underlay MTU for %s",
            found[0],
            found[1],
            device.ifname,
        )
        base = found[1]
    mtu = base - (OVERHEAD_TUN if device.device_type == "tun" else OVERHEAD_TAP)
    try:
        device.set_mtu(mtu)
        log.info("Setting MTU %d on device %s", mtu, device.ifname)
    except Exception as exc:  # netlink errors come in several classes; all are only logged here
        log.error("Failed to set MTU %d on %s: %s", mtu, device.ifname, exc)


def _safe_mtu(device: Device) -> str:
    try:
        return str(device.get_mtu())
    except (OSError, ValueError):
        return "unchanged"


def _rp_path(name: str) -> str:
    return f"/proc/sys/net/ipv4/conf/{name}/rp_filter"


def _read_int(path: str) -> int | None:
    try:
        with open(path) as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None


def fix_rp_filter(ifname: str) -> None:
    """Spec 12 step 6: all > 1 -> 1; interface != 1 -> 1. Errors are fatal (raised)."""
    if (_read_int(_rp_path("all")) or 0) > 1:
        log.info("Setting net.ipv4.conf.all.rp_filter=1")
        with open(_rp_path("all"), "w") as fh:
            fh.write("1\n")
    if _read_int(_rp_path(ifname)) != 1:
        log.info("Setting net.ipv4.conf.%s.rp_filter=1", ifname)
        with open(_rp_path(ifname), "w") as fh:
            fh.write("1\n")


def check_rp_filter(ifname: str) -> None:
    """Spec 12 step 7: warn about CVE-2019-14899 unless rp_filter is strict (1)."""
    values = [v for v in (_read_int(_rp_path("all")), _read_int(_rp_path(ifname))) if v is not None]
    if values and max(values) != 1:
        log.warning(
            "Your networking configuration might be affected by a vulnerability (%s), "
            "please change your rp_filter setting to 1 (currently %d).",
            CVE_URL,
            max(values),
        )


# --- kernel routes for remote claims (ours) --------------------------------------------------------


def claim_network(rng: Range) -> str | None:
    """The claim as a network in CIDR form, or None for claims that are not IP ranges."""
    if len(rng.base) not in (4, 16):
        return None
    bits = len(rng.base) * 8
    if rng.prefix_len > bits:
        return None
    net = ipaddress.ip_network((ipaddress.ip_address(rng.base), rng.prefix_len), strict=False)
    return str(net)


class RouteManager:
    """Keeps one kernel route per remote claim pointing at the TUN device.

    The original does not program routes (its users add them in ifup scripts). Default routes
    (prefix 0) are never installed: a peer claiming the world would also capture the underlay and cut
    the tunnel's own traffic.
    """

    def __init__(self, ifname: str, own_networks: Iterable[str] = ()) -> None:
        self.ifname = ifname
        self.installed: set[str] = set()
        # the interface's own connected subnet already routes to the device
        self.skip = set(own_networks)
        self.failed = False

    def sync(self, claims: Iterable[tuple[Range, SocketAddr]]) -> None:
        """Install routes for new claims, remove routes for vanished ones."""
        wanted: set[str] = set()
        for rng, peer in claims:
            net = claim_network(rng)
            if net is None or net in self.skip:
                continue
            if net.endswith("/0"):
                log.warning("Not routing default claim %s of %s", net, format_sockaddr(nice(peer)))
                continue
            wanted.add(net)
        if wanted == self.installed:
            return
        try:
            with Rtnl() as nl:
                try:
                    netlink.index(self.ifname)
                except NetlinkError:
                    return
                for net in sorted(wanted - self.installed):
                    try:
                        nl.route("replace", net, self.ifname)
                        log.debug("Added route %s dev %s", net, self.ifname)
                        self.installed.add(net)
                    except NetlinkError as exc:
                        log.warning("Failed to add route %s dev %s: %s", net, self.ifname, exc)
                for net in sorted(self.installed - wanted):
                    try:
                        nl.route("del", net, self.ifname)
                        log.debug("Removed route %s dev %s", net, self.ifname)
                    except NetlinkError as exc:
                        log.debug("Failed to remove route %s: %s", net, exc)
                    self.installed.discard(net)
        except OSError as exc:
            if not self.failed:
                log.warning("Cannot program kernel routes (%s); use --no-routes to silence this", exc)
                self.failed = True
