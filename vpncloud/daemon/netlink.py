"""The few rtnetlink requests the daemon makes: link MTU/state/gso_max_size, an IPv4 address, routes.

This replaces pyroute2 in the daemon (issue 21): importing pyroute2 costs about 11 MB of RSS for
the life of the process, for a handful of messages at start-up and on claim changes. The messages
are the ones ``ip link set``, ``ip addr add`` and ``ip route replace/del`` send (rtnetlink(7)).
Every request asks for an acknowledgement, so a refusal comes back as :class:`NetlinkError` with
the kernel's errno.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Iterator

NETLINK_ROUTE = 0
RTM_NEWLINK = 16
RTM_NEWADDR = 20
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_DUMP = 0x300
IFF_UP = 0x1
IFLA_MTU = 4
IFLA_GSO_MAX_SIZE = 41
IFA_ADDRESS = 1
IFA_LOCAL = 2
RTA_DST = 1
RTA_OIF = 4
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_NOWHERE = 255  # in a delete: any scope
RTN_UNICAST = 1

_HDR = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, pid
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg: family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg: family, dst_len, src_len, tos, table, proto, scope, type, flags
_RTA = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_ERR = struct.Struct("=i")


class NetlinkError(OSError):
    """The kernel refused a request (``errno`` is its error) or answered something unreadable."""


def _attr(kind: int, data: bytes) -> bytes:
    length = _RTA.size + len(data)
    return _RTA.pack(length, kind) + data + bytes(-length % 4)


def _attrs(data: bytes, pos: int) -> Iterator[tuple[int, bytes]]:
    while pos + _RTA.size <= len(data):
        length, kind = _RTA.unpack_from(data, pos)
        if length < _RTA.size or pos + length > len(data):
            raise NetlinkError("malformed netlink attribute")
        yield kind, data[pos + _RTA.size : pos + length]
        pos += (length + 3) & ~3


def index(ifname: str) -> int:
    """The interface index; NetlinkError (ENODEV) when there is no such interface."""
    try:
        return socket.if_nametoindex(ifname)
    except OSError as exc:
        raise NetlinkError(exc.errno or 19, f"no interface {ifname}") from exc


class Rtnl:
    """One rtnetlink socket for a few requests (a context manager, like pyroute2's ``IPRoute``)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.seq = 0

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def request(self, kind: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
        """Send one request and collect the answers up to its ack (or the end of a dump)."""
        self.seq += 1
        seq = self.seq
        self.sock.send(_HDR.pack(_HDR.size + len(body), kind, flags | NLM_F_REQUEST, seq, 0) + body)
        out: list[tuple[int, bytes]] = []
        while True:
            data = self.sock.recv(65536)
            pos = 0
            while pos + _HDR.size <= len(data):
                length, mtype, _flags, mseq, _pid = _HDR.unpack_from(data, pos)
                if length < _HDR.size or pos + length > len(data):
                    raise NetlinkError("malformed netlink message")
                payload = data[pos + _HDR.size : pos + length]
                pos += (length + 3) & ~3
                if mseq != seq:
                    continue  # an answer to an earlier request (not ours to read)
                if mtype == NLMSG_DONE:
                    return out
                if mtype == NLMSG_ERROR:
                    if len(payload) < _ERR.size:
                        raise NetlinkError("truncated netlink error")
                    err = -_ERR.unpack_from(payload)[0]
                    if err:
                        raise NetlinkError(err, os.strerror(err))
                    return out
                out.append((mtype, payload))
            if not data:
                raise NetlinkError("netlink socket closed")

    def link_set(
        self, ifname: str, *, mtu: int | None = None, up: bool = False, gso_max_size: int | None = None
    ) -> None:
        """``ip link set``: MTU, state up, gso_max_size (only the ones given)."""
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, index(ifname), IFF_UP if up else 0, IFF_UP if up else 0)
        if mtu is not None:
            body += _attr(IFLA_MTU, _U32.pack(mtu))
        if gso_max_size is not None:
            body += _attr(IFLA_GSO_MAX_SIZE, _U32.pack(gso_max_size))
        self.request(RTM_NEWLINK, NLM_F_ACK, body)

    def addr_add(self, ifname: str, addr: str, prefix: int) -> None:
        """``ip addr add ADDR/PREFIX dev IFNAME`` (IPv4 or IPv6)."""
        ip = ipaddress.ip_address(addr)
        family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        body = _IFADDR.pack(family, prefix, 0, RT_SCOPE_UNIVERSE, index(ifname))
        body += _attr(IFA_LOCAL, ip.packed) + _attr(IFA_ADDRESS, ip.packed)
        self.request(RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body)

    def ipv4_addresses(self, ifname: str) -> list[str]:
        """The IPv4 addresses on the interface, in the kernel's order."""
        idx = index(ifname)
        found = []
        for mtype, payload in self.request(RTM_GETADDR, NLM_F_DUMP, _IFADDR.pack(socket.AF_INET, 0, 0, 0, 0)):
            if mtype != RTM_NEWADDR or len(payload) < _IFADDR.size:
                continue
            family, _plen, _flags, _scope, aidx = _IFADDR.unpack_from(payload)
            if family != socket.AF_INET or aidx != idx:
                continue
            attrs = dict(_attrs(payload, _IFADDR.size))
            value = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
            if value and len(value) == 4:
                found.append(socket.inet_ntoa(value))
        return found

    def route(self, command: str, dst: str, ifname: str) -> None:
        """``ip route replace|del DST dev IFNAME`` in the main table."""
        net = ipaddress.ip_network(dst)
        family = socket.AF_INET if net.version == 4 else socket.AF_INET6
        if command == "replace":
            kind, flags = RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
            scope = RT_SCOPE_LINK if net.version == 4 else RT_SCOPE_UNIVERSE
            proto, rtype = RTPROT_BOOT, RTN_UNICAST
        elif command == "del":
            kind, flags, scope, proto, rtype = RTM_DELROUTE, NLM_F_ACK, RT_SCOPE_NOWHERE, 0, 0
        else:
            raise ValueError(f"no route command {command!r}")
        body = _RTMSG.pack(family, net.prefixlen, 0, 0, RT_TABLE_MAIN, proto, scope, rtype, 0)
        body += _attr(RTA_DST, net.network_address.packed) + _attr(RTA_OIF, _U32.pack(index(ifname)))
        self.request(kind, flags, body)
