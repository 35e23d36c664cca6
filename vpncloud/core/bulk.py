"""Batch data path of a :class:`~vpncloud.core.node.Node` (issue 9): many DATA packets per call.

With kernel offloads the daemon gets 64 KB super-packets from the device and GRO trains of dozens of
datagrams from the socket. Feeding them one by one through ``receive_packet``/``receive_datagram``
repeats the same work (address parsing, table lookup, peer lookup, counters, message dispatch) for
every packet. These functions do it once per batch and then only encrypt/decrypt per packet. The
wire does not change: every datagram is still one ordinary DATA message with one inner packet.

Anything that is not the plain common case goes through the node's normal per-packet methods, so the
behaviour is identical: an ACL policy, TAP mode, unknown destinations, broadcast, handshakes,
non-DATA messages (rotation, NODE_INFO, keepalive, close), unencrypted sessions.
"""

from __future__ import annotations

import functools
import logging
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from vpncloud.fastpath.rows import PacketRows, Train
from vpncloud.fastpath.superpacket import (
    FEATURE_TCP,
    FEATURE_UDP,
    MSG_SUPER,
    SLICE_MARK_BYTE,
    VNET_HDR_LEN,
    Reassembler,
    SuperPacketError,
    SuperPacketView,
    check_super_payload,
    split_frame_train,
    whole_message,
)

from .acl import AclPolicy
from .crypto_core import FRAME_OVERHEAD
from .errors import CryptoError, DecodeError
from .messages import MSG_DATA
from .payload import parse_frame
from .peer_crypto import PeerCrypto
from .relay import MSG_RELAY_FROM, MSG_RELAY_TO, SYNTHETIC_PREFIX, RelayManager
from .table import ClaimTable
from .traffic import TrafficEntry, TrafficStats, drop_reason
from .types import DeviceType, SocketAddr, mapped


# What the batch paths use of a node and its peers: node.py calls this module, so this module
# names the node's parts through protocols instead of importing node.py (no import circle).
class _Config(Protocol):
    @property
    def device_type(self) -> DeviceType: ...


class Peer(Protocol):
    crypto: PeerCrypto
    features: int
    reassembly: Any
    heard: bool


class Node(Protocol):
    @property
    def config(self) -> _Config: ...

    table: ClaimTable
    traffic: TrafficStats
    acl: AclPolicy | None
    relay: RelayManager | None
    super_features: int
    super_datagram: int
    super_id: int
    _learning: bool
    _pending: dict[SocketAddr, PeerCrypto]
    _out: list[tuple[bytes | Train, SocketAddr]]
    _device_out: list[bytes | PacketRows | SuperPacketView]

    @property
    def _peers(self) -> Mapping[SocketAddr, Peer]: ...

    def _parse(self, data: bytes, /) -> tuple[bytes, bytes]: ...

    def receive_datagram(self, data: bytes, addr: SocketAddr, now: float) -> None: ...

    def receive_packet(self, packet: bytes, now: float) -> None: ...

    # Any: the node's own Peer class is narrower than this module's protocol of it
    def _handle_peer(
        self, peer: Any, data: bytes, addr: SocketAddr, now: float, plain: bytes | None = None
    ) -> None: ...


_DATA_PREFIX = bytes((MSG_DATA,))
#: Trains of smaller datagrams are not worth the row layout (and cannot hold a DATA message).
_TRAIN_MIN_SEG = FRAME_OVERHEAD + 1
_SUPER_PREFIX = bytes((MSG_SUPER,))
_RELAY_PREFIXES = (bytes((MSG_RELAY_TO,)), bytes((MSG_RELAY_FROM,)))
#: Enough of an IP packet for its addresses (the IPv6 header; IPv4 needs 20).
_ADDR_HEADER = 40
log = logging.getLogger("vpncloud.node")


def _entry(table: dict[object, TrafficEntry], key: object) -> TrafficEntry:
    entry = table.get(key)
    if entry is None:
        entry = table[key] = TrafficEntry()
    return entry


def send_packets(node: Node, packets: list[bytes] | PacketRows, now: float) -> None:
    """Packets (TUN) or frames (TAP) read from the device that share source and destination
    address (the segments of one super-packet), in order. Same result as ``receive_packet`` for
    each of them.

    :class:`PacketRows` (segments laid out in one buffer) are encrypted straight into one
    :class:`Train` of datagrams when the common case applies; otherwise they take the general path."""
    if not len(packets):
        return
    rows = packets if isinstance(packets, PacketRows) else None
    # TAP frames qualify too: one destination MAC gives one lookup (a hub never finds a target)
    if len(packets) == 1 or node.acl is not None:
        _one_by_one(node, packets, now)
        return
    try:
        src, dst = node._parse(rows.packet(0) if rows is not None else packets[0])  # type: ignore[index]
    except DecodeError:
        _one_by_one(node, packets, now)
        return
    target = node.table.lookup(dst, now)
    peer = node._peers.get(target) if target is not None else None
    core = peer.crypto.core if peer is not None and peer.crypto.is_ready else None
    if target is None or core is None:
        _one_by_one(node, packets, now)
        return
    traffic = node.traffic
    out = node._out
    if rows is not None and _uniform(rows.lengths):
        train = core.encrypt_rows(MSG_DATA, rows)
        payload_bytes = rows.total()
        out.append((train, target))
        frame_bytes = len(train)
    else:
        plain: list[bytes] = rows.packets() if rows is not None else packets  # type: ignore[assignment]
        frames = core.encrypt_many(_DATA_PREFIX, plain)
        payload_bytes = sum(map(len, plain))
        frame_bytes = sum(map(len, frames))
        for frame in frames:
            out.append((frame, target))
    entry = _entry(traffic.payload, (dst, src))  # type: ignore[arg-type]
    entry.out_bytes += payload_bytes
    entry.out_packets += len(packets)
    entry = _entry(traffic.peers, target)  # type: ignore[arg-type]
    entry.out_bytes += frame_bytes
    entry.out_packets += len(packets)


def _one_by_one(node: Node, packets: list[bytes] | PacketRows, now: float) -> None:
    for packet in packets.packets() if isinstance(packets, PacketRows) else packets:
        node.receive_packet(packet, now)


def _uniform(lengths: Sequence[int]) -> bool:
    """Equal lengths except a shorter (or equal) last one: the layout of one GSO train."""
    first = lengths[0]
    same = list(lengths).count(first)
    return same == len(lengths) or (same == len(lengths) - 1 and lengths[-1] < first)


def receive_datagrams(node: Node, datagrams: list[bytes], addr: SocketAddr, now: float) -> None:
    """Datagrams from one source address, in order. Same result as ``receive_datagram`` for each."""
    if ":" not in addr[0]:
        addr = mapped(addr)
    elif len(addr) != 2:
        addr = (addr[0], addr[1])
    peer = node._peers.get(addr) if addr[0][:5] != SYNTHETIC_PREFIX else None
    if datagrams and datagrams[0][:1] == SLICE_MARK_BYTE and node.super_features and peer is not None:
        _receive_slices(node, peer, datagrams, addr, now)
        return
    core = peer.crypto.core if peer is not None and peer.crypto.is_ready else None
    if (
        peer is None
        or core is None
        or addr in node._pending
        or node.acl is not None
        or node.config.device_type is not DeviceType.TUN
        or node._learning
    ):
        for data in datagrams:
            node.receive_datagram(data, addr, now)
        return
    traffic = node.traffic
    pairs: dict[bytes, list[int]] = {}
    device_out = node._device_out
    decrypt_many = core.decrypt_many
    nbytes = 0
    count = 0
    plains = decrypt_many(datagrams)
    if any(plains):
        # an authentic session frame: the peer has our key (node.PENG_PROBE_TICKS)
        peer.heard = True
    peers = node._peers
    slow = False
    for data, plain in zip(datagrams, plains, strict=True):
        if slow or plain is None or data[:1] == b"\xff" or data[:1] == SLICE_MARK_BYTE:
            # handshakes, slices, and frames that fail to decrypt take the normal path, which
            # counts, logs and handles them exactly like the original
            node.receive_datagram(data, addr, now)
            slow = slow or peers.get(addr) is not peer
            continue
        if plain[:1] in _RELAY_PREFIXES and node.relay is not None:
            # Relay messages (relay.py) go on decrypted: the normal path would decrypt them again,
            # which cost relayed throughput (bench/relay.py). Same replay check as DATA here.
            traffic.count_in_traffic(addr, len(data))
            # peer is the node's own Peer object; this module only names it by protocol
            node.relay.on_message(peer, addr, plain[0], plain[1:], now)  # type: ignore[arg-type]
            slow = peers.get(addr) is not peer
            continue
        if plain[:1] != _DATA_PREFIX:
            # rotation, NODE_INFO, keepalive, close...: the normal path, from the plaintext (the
            # replay bitmap would refuse a second decryption). After a CLOSE or a new handshake
            # the rest of the batch takes the normal path too.
            traffic.count_in_traffic(addr, len(data))
            node._handle_peer(peer, data, addr, now, plain)
            slow = peers.get(addr) is not peer
            continue
        nbytes += len(data)
        count += 1
        payload = plain[1:]
        # parse_packet inlined: the address pair as one slice, counted per pair at the end
        size = len(payload)
        version = payload[0] >> 4 if size else 0
        if version == 4 and size >= 20:
            key = payload[12:20]
        elif version == 6 and size >= 40:
            key = payload[8:40]
        else:
            traffic.count_invalid_protocol(size)
            continue
        sums = pairs.get(key)
        if sums is None:
            pairs[key] = [size, 1]
        else:
            sums[0] += size
            sums[1] += 1
        device_out.append(payload)
    _count_in(
        traffic, {(k[: len(k) // 2], k[len(k) // 2 :]): v for k, v in pairs.items()}, addr, nbytes, count
    )


def _count_in(
    traffic: TrafficStats,
    pairs: dict[tuple[bytes, bytes], list[int]],
    addr: SocketAddr,
    nbytes: int,
    count: int,
) -> None:
    """Received-traffic counters of a batch: per address pair (``pairs``: (source, destination)
    -> [bytes, packets]) and per peer."""
    payload_table = traffic.payload
    for pair, (size, packets) in pairs.items():
        entry = payload_table.get(pair)
        if entry is None:
            entry = payload_table[pair] = TrafficEntry()
        entry.in_bytes += size
        entry.in_packets += packets
    if count:
        entry = _entry(traffic.peers, addr)  # type: ignore[arg-type]
        entry.in_bytes += nbytes
        entry.in_packets += count


#: Below this many rows the Python loop of ``receive_train`` is as quick as the one-pair check.
_NP_MIN_ROWS = 4
#: Where a row (type byte + IP packet) keeps its source and destination address, and their length.
_PAIR_V4 = (13, 8)
_PAIR_V6 = (9, 32)
#: bytes.translate table: a packet's first byte to its IP version
_VERSION = bytes(b >> 4 for b in range(256))


@functools.lru_cache(maxsize=256)
def _pair_fields(stride: int, n: int, off: int, key_len: int) -> struct.Struct:
    """Type byte, first IP byte and address bytes of each of ``n`` rows in one unpack."""
    row = f"BB{off - 2}x{key_len}s"
    return struct.Struct(f"{row}{stride - off - key_len}x" * (n - 1) + row)


def _one_pair(rows: bytearray, stride: int, lengths: list[int]) -> bytes | None:
    """The address bytes (source + destination) shared by every row when all rows are DATA
    messages with IP packets of one version between one pair of addresses (a GRO train of one
    TCP flow), else None: one struct unpack of the rows' fields instead of a Python step per
    row (and no numpy on T1's receive path)."""
    # failed frames are -1; shorter rows than an IPv6 header (+ type byte) take the loop
    if min(lengths) < 41:
        return None
    version = rows[1] >> 4
    if version == 4:
        off, key_len = _PAIR_V4
    elif version == 6:
        off, key_len = _PAIR_V6
    else:
        return None
    n = len(lengths)
    fields = _pair_fields(stride, n, off, key_len).unpack_from(rows)
    keys = fields[2::3]
    if (
        fields[0::3].count(MSG_DATA) != n
        or bytes(fields[1::3]).translate(_VERSION).count(version) != n
        or keys.count(keys[0]) != n
    ):
        return None
    return keys[0]  # type: ignore[no-any-return]


def receive_train(node: Node, data: bytes, seg: int, addr: SocketAddr, now: float) -> None:
    """A GRO train from ``addr``: datagrams of ``seg`` bytes back to back (the last may be
    shorter). Same result as ``receive_datagram`` for each; in the common case (DATA messages of
    a ready peer) every frame is decrypted straight into one buffer and the packets reach the
    device side as :class:`PacketRows`, without a ``bytes`` object per packet."""
    if ":" not in addr[0]:
        addr = mapped(addr)
    elif len(addr) != 2:
        addr = (addr[0], addr[1])
    peer = node._peers.get(addr)
    core = peer.crypto.core if peer is not None and peer.crypto.is_ready else None
    if data[:1] == SLICE_MARK_BYTE and node.super_features and peer is not None and peer.crypto.is_ready:
        frame = whole_message(data, seg)
        if frame is not None:
            # one super-packet in one GRO read: no reassembly state at all
            entry = _entry(node.traffic.peers, addr)  # type: ignore[arg-type]
            entry.in_bytes += len(data)
            entry.in_packets += (len(data) + seg - 1) // seg
            _deliver_super(node, peer, frame, addr, now)
            return
    tap = node.config.device_type is DeviceType.TAP
    if (
        peer is None
        or core is None
        or seg <= _TRAIN_MIN_SEG
        or data[:1] == SLICE_MARK_BYTE
        or addr in node._pending
        or node.acl is not None
        or (node._learning and not tap)
    ):
        receive_datagrams(node, [data[pos : pos + seg] for pos in range(0, len(data), seg)], addr, now)
        return
    rows, lengths = core.decrypt_train(data, seg)
    if max(lengths) > 0:
        # an authentic session frame: the peer has our key (node.PENG_PROBE_TICKS)
        peer.heard = True
    stride = seg - FRAME_OVERHEAD
    traffic = node.traffic
    device_out = node._device_out
    if not tap and len(lengths) >= _NP_MIN_ROWS:
        key = _one_pair(rows, stride, lengths)
        if key is not None:
            # the usual train: all DATA, one address pair; the loop below gives the same result
            sizes = [size - 1 for size in lengths]
            device_out.append(PacketRows(memoryview(rows), stride, sizes))
            half = len(key) // 2
            one = {(key[:half], key[half:]): [sum(sizes), len(sizes)]}
            _count_in(traffic, one, addr, len(data), len(sizes))
            return
    peers = node._peers
    pairs: dict[tuple[bytes, bytes], list[int]] = {}
    learn = node.table.learn if tap and node._learning else None
    count = 0
    run_start = 0  # first row of the current run of DATA rows
    run: list[int] = []
    view = memoryview(rows)
    total = len(data)
    # the rows of one train nearly always share their address pair: compare in place
    same_key = b""
    same_len = 0
    same_sums = [0, 0]
    stopped = False
    for i, size in enumerate(lengths):
        start = i * stride
        if size > 1 and rows[start] == MSG_DATA:
            packet_len = size - 1
            count += 1
            # the bytes that make the address pair: offset in the row and length
            if tap:
                # both MACs and the ethertype, plus the tag of an 802.1Q frame (parse_frame)
                off = 1
                key_len = (
                    16 if packet_len >= 14 and rows[start + 13] == 0x81 and rows[start + 14] == 0 else 14
                )
                if packet_len < key_len:
                    traffic.count_invalid_protocol(packet_len)
                    continue
            else:
                version = rows[start + 1] >> 4
                if version == 4 and packet_len >= 20:
                    off, key_len = _PAIR_V4
                elif version == 6 and packet_len >= 40:
                    off, key_len = _PAIR_V6
                else:
                    traffic.count_invalid_protocol(packet_len)
                    continue
            at = start + off
            if same_len != key_len or not rows.startswith(same_key, at):
                same_key = bytes(view[at : at + key_len])
                same_len = key_len
                half = key_len // 2
                pair = parse_frame(same_key) if tap else (same_key[:half], same_key[half:])
                same_sums = pairs.setdefault(pair, [0, 0])
            if not run:
                run_start = i
            run.append(packet_len)
            same_sums[0] += packet_len
            same_sums[1] += 1
            continue
        # anything else (failed frames, rotation, NODE_INFO, keepalive, close, empty DATA): the
        # normal path, in order; a decrypted one from its plaintext (the replay bitmap would
        # refuse a second decryption), a failed one again to be counted with its reason
        if run:
            device_out.append(PacketRows(view[run_start * stride :], stride, run))
            run = []
        if learn is not None:
            # in order: what came before this message has been learned when it is handled
            for src, _dst in pairs:
                learn(src, addr, now)
        if size < 0:
            node.receive_datagram(data[i * seg : (i + 1) * seg], addr, now)
        else:
            frame = data[i * seg : (i + 1) * seg]
            traffic.count_in_traffic(addr, len(frame))
            node._handle_peer(peer, frame, addr, now, bytes(view[start : start + size]))
        if peers.get(addr) is not peer:
            # a CLOSE or a new handshake: the rest takes the normal path too
            for pos in range((i + 1) * seg, total, seg):
                node.receive_datagram(data[pos : pos + seg], addr, now)
            stopped = True
            break
    if run:
        device_out.append(PacketRows(view[run_start * stride :], stride, run))
    if learn is not None and not stopped:
        for src, _dst in pairs:
            learn(src, addr, now)
    # every counted datagram is a whole segment, except a counted last one
    nbytes = count * seg
    last = len(lengths) - 1
    if not stopped and lengths[last] > 1 and rows[last * stride] == MSG_DATA:
        nbytes -= len(lengths) * seg - total
    _count_in(traffic, pairs, addr, nbytes, count)


# --- super-packets (superpacket.py) ------------------------------------------------------------


def _gso_feature(data: bytes) -> int:
    """The feature bit a super-packet needs at the receiver (virtio gso_type at offset 1)."""
    kind = data[1] & 0x7F
    return FEATURE_UDP if kind == 5 else FEATURE_TCP


def send_super(node: Node, data: bytes, segments: Callable[[], list[bytes] | PacketRows], now: float) -> None:
    """A super-packet from the device: as one message to a peer that takes it, else as segments."""
    peer = None
    target = None
    if (
        node.super_features
        and node.super_datagram
        and node.acl is None
        and node.config.device_type is DeviceType.TUN
        and len(data) > VNET_HDR_LEN
    ):
        try:
            # the addresses only: slicing the whole packet would copy 64 KB
            src, dst = node._parse(data[VNET_HDR_LEN : VNET_HDR_LEN + _ADDR_HEADER])
        except DecodeError:
            src = dst = b""
        if dst:
            target = node.table.lookup(dst, now)
            peer = node._peers.get(target) if target is not None else None
    if (
        peer is None
        or target is None
        or not peer.features & _gso_feature(data)
        or peer.crypto.core is None
        or not peer.crypto.is_ready
    ):
        send_packets(node, segments(), now)
        return
    frame = peer.crypto.core.encrypt(_SUPER_PREFIX + data)
    node.super_id = (node.super_id + 1) & 0xFFFFFFFF
    try:
        train = split_frame_train(frame, node.super_id, node.super_datagram)
    except ValueError:
        send_packets(node, segments(), now)
        return
    traffic = node.traffic
    entry = _entry(traffic.payload, (dst, src))  # type: ignore[arg-type]
    entry.out_bytes += len(data) - VNET_HDR_LEN
    entry.out_packets += 1
    entry = _entry(traffic.peers, target)  # type: ignore[arg-type]
    entry.out_bytes += len(train)
    entry.out_packets += train.count
    node._out.append((train, target))


def _receive_slices(node: Node, peer: Peer, datagrams: list[bytes], addr: SocketAddr, now: float) -> None:
    """A GRO train that starts with super-packet slices (other datagrams take the normal path)."""
    if not peer.crypto.is_ready:
        for data in datagrams:
            node.receive_datagram(data, addr, now)
        return
    reassembly = peer.reassembly
    if reassembly is None:
        reassembly = peer.reassembly = Reassembler()
    add = reassembly.add
    nbytes = 0
    count = 0
    for data in datagrams:
        if data[:1] != SLICE_MARK_BYTE:
            node.receive_datagram(data, addr, now)
            continue
        nbytes += len(data)
        count += 1
        try:
            frame = add(data)
        except SuperPacketError:
            node.traffic.count_invalid_protocol(len(data))
            continue
        if frame is not None:
            _deliver_super(node, peer, frame, addr, now)
    if count:
        entry = _entry(node.traffic.peers, addr)  # type: ignore[arg-type]
        entry.in_bytes += nbytes
        entry.in_packets += count


def receive_slice(node: Node, data: bytes, addr: SocketAddr, now: float) -> None:
    """One super-packet slice from ``addr`` (already counted as received traffic)."""
    peer = node._peers.get(addr)
    if peer is None or not peer.crypto.is_ready:
        node.traffic.count_invalid_protocol(len(data), "unknown_peer")
        return
    if peer.reassembly is None:
        peer.reassembly = Reassembler()
    try:
        frame = peer.reassembly.add(data)
    except SuperPacketError:
        node.traffic.count_invalid_protocol(len(data))
        return
    if frame is not None:
        _deliver_super(node, peer, frame, addr, now)


def _deliver_super(node: Node, peer: Peer, frame: bytes | memoryview, addr: SocketAddr, now: float) -> None:
    """A reassembled super-packet frame: decrypt, check, queue for the device."""
    try:
        payload = peer.crypto.open_payload(frame, MSG_SUPER)
    except CryptoError as err:
        node.traffic.count_invalid_protocol(len(frame), drop_reason(err))
        log.debug("Dropping a super-packet from %s: %s", addr, err)
        return
    peer.heard = True  # it authenticated
    try:
        check_super_payload(payload, node.super_features)
        src, dst = node._parse(bytes(payload[VNET_HDR_LEN : VNET_HDR_LEN + _ADDR_HEADER]))
    except (SuperPacketError, DecodeError) as err:
        node.traffic.count_invalid_protocol(len(payload))
        log.debug("Dropping a super-packet from %s: %s", addr, err)
        return
    acl = node.acl
    if acl is not None and not acl.check(bytes(payload[VNET_HDR_LEN:]), now, outbound=False, frame=False):
        node.traffic.count_dropped_payload(len(payload) - VNET_HDR_LEN, "acl")
        return
    node.traffic.count_in_payload(src, dst, len(payload) - VNET_HDR_LEN)
    node._device_out.append(SuperPacketView(payload))
