"""The node: peers, pending handshakes, housekeeping and forwarding (the original's ``cloud.rs``).

Theory of operation
-------------------
A :class:`Node` is a sans-I/O state machine. The daemon (or the simulator) feeds it

* datagrams received on the UDP socket (:meth:`Node.receive_datagram`),
* packets/frames read from the TUN/TAP device (:meth:`Node.receive_packet`),
* the passage of time (:meth:`Node.handle_timer` at :meth:`Node.get_timer`),

and drains what it produced: datagrams to send, packets to write to the device, and events (hooks,
stats, beacons, name resolution, route changes) that need I/O the core must not do itself.

Every peer is keyed by its *mapped* socket address (spec 3.4). A handshake in progress lives in
``_pending``; once it succeeds the same :class:`PeerCrypto` object moves into a :class:`Peer`.
Housekeeping runs once per tick (1 s, the original's design intent; spec 2.2) in the order of spec 2.3.

Deliberate differences from the original, each because its behaviour is a bug that is not visible on
the wire (spec 25):

* quirk 22: the reconnect list compares *mapped* addresses, so a connected configured IPv4 peer resets
  its back-off and a lost one is retried within a second, as documented;
* quirk 17: a stray PENG that fails in a fresh responder does not report the established peer with the
  same address as disconnected;
* quirk 11: the NODE_INFO interval uses signed arithmetic clamped to >= 1 s;
* quirk 13: DATA for a claim whose peer is gone starts a connection to that address instead of failing;
* no zero-length datagrams are sent (spec 4.5), and short frames are rejected instead of panicking.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from vpncloud.fastpath.rows import PacketRows, Train
from vpncloud.fastpath.superpacket import (
    SLICE_MARK_BYTE,
    SuperPacket,
    SuperPacketView,
    add_features,
    decode_features,
)

from . import bulk, messages
from .acl import AclPolicy
from .beacon import encode_beacon, hour_stamp
from .droplog import DropLog
from .errors import CryptoError, DecodeError, InitFatal, SignatureError, VpnCloudError
from .guard import GuardConfig, HandshakeGuard
from .handshake import STAGE_PING, decode_init, ping_ephemeral_key
from .messages import NodeInfo, PeerInfo
from .payload import parse_frame, parse_packet
from .peer_crypto import CryptoConfig, Initialized, Message, PeerCrypto, Reply
from .relay import (
    MSG_RELAY_FROM,
    MSG_RELAY_REFUSED,
    MSG_RELAY_TO,
    SYNTHETIC_PREFIX,
    RelayConfig,
    RelayManager,
    is_synthetic,
)
from .table import ClaimTable
from .traffic import TrafficStats, drop_reason
from .types import (
    NODE_ID_BYTES,
    DeviceType,
    Mode,
    Range,
    SocketAddr,
    format_sockaddr,
    mapped,
    nice,
    parse_sockaddr,
)

log = logging.getLogger("vpncloud.node")

#: Housekeeping period. The original intends 1 s (and ticks every ~2 s by accident, spec 2.2).
TICK = 1.0
#: Ticks after a handshake we started in which we send keepalives until the peer is heard from.
PENG_PROBE_TICKS = 10
#: ``completed``: a new session; ``failed``: a pending handshake given up (fatal error, timeout, bad
#: node info); ``rejected``: a handshake message that did not verify (untrusted key, bad signature).
HANDSHAKE_RESULTS = ("completed", "failed", "rejected")
#: How often own addresses are recomputed and configured peers re-resolved (spec 10.4, 10.5).
OWN_ADDRESS_RESET = 300.0
RESOLVE_INTERVAL = 300.0
#: Reconnect back-off (spec 10.4).
RECONNECT_MAX_TIMEOUT = 3600.0
RECONNECT_TRIES_PER_STEP = 10
#: At most this many peers go into one NODE_INFO (spec 9.2).
MAX_NODE_INFO_PEERS = 20
#: Hours a loaded beacon stays valid (spec 15.5).
BEACON_TTL_HOURS = 50
DEFAULT_PEER_TIMEOUT = 300


class Rng(Protocol):
    def randbytes(self, n: int, /) -> bytes: ...

    def random(self) -> float: ...


# --- configuration ---------------------------------------------------------------------------


@dataclass
class NodeConfig:
    """What the node needs of the original's configuration (the daemon builds it, spec 14)."""

    device_type: DeviceType = DeviceType.TUN
    mode: Mode = Mode.NORMAL
    port: int = 3210
    peer_timeout: int = DEFAULT_PEER_TIMEOUT
    keepalive: int | None = None
    switch_timeout: int = 300
    claims: list[Range] = field(default_factory=list)
    advertise_addresses: list[SocketAddr] = field(default_factory=list)
    beacon_interval: int = 3600
    beacon_password: str = ""
    beacon_store: bool = False
    beacon_load: bool = False
    stats_interval: int = 60
    statsd_prefix: str | None = None
    #: Handshake flood limits, pending bounds and the amplification budget (guard.py).
    guard: GuardConfig = field(default_factory=GuardConfig)

    @property
    def learning(self) -> bool:
        """Whether received DATA teaches the table its source address (spec 11.1)."""
        return self.mode is Mode.SWITCH or (self.mode is Mode.NORMAL and self.device_type is DeviceType.TAP)

    @property
    def broadcast(self) -> bool:
        """Whether packets for unknown destinations go to every peer (spec 11.1)."""
        return self.mode in (Mode.SWITCH, Mode.HUB) or (
            self.mode is Mode.NORMAL and self.device_type is DeviceType.TAP
        )


# --- events ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerConnecting:
    """A connection attempt starts (hook ``peer_connecting``)."""

    addr: SocketAddr


@dataclass(frozen=True)
class PeerConnected:
    """A handshake completed (hook ``peer_connected``)."""

    addr: SocketAddr
    node_id: bytes
    claims: list[Range]


@dataclass(frozen=True)
class PeerDisconnected:
    """A peer closed, or a handshake failed fatally (hook ``peer_disconnected``).

    ``raw_addr`` says the hook shows the mapped form, as the original does for CLOSE (spec 19.1).
    """

    addr: SocketAddr
    node_id: bytes | None
    raw_addr: bool = False


@dataclass(frozen=True)
class PeerTimedOut:
    """A peer was dropped because it was silent for ``peer-timeout`` (no hook in the original)."""

    addr: SocketAddr
    node_id: bytes


@dataclass(frozen=True)
class ClaimsChanged:
    """The claims of remote peers changed: kernel routes may need updating."""


@dataclass(frozen=True)
class StatsDue:
    """Time to write the stats file and send the statsd datagram (spec 18)."""

    text: str
    statsd: str | None


@dataclass(frozen=True)
class BeaconStore:
    """Store this beacon (file, 0444, or ``|command``; spec 15.6)."""

    beacon: str


@dataclass(frozen=True)
class BeaconLoad:
    """Load beacons now and report them with :meth:`Node.beacon_loaded`."""


@dataclass(frozen=True)
class OwnAddressesDue:
    """Recompute own addresses and report them with :meth:`Node.set_own_addresses`."""


@dataclass(frozen=True)
class ResolvePeer:
    """Resolve a configured peer name again and report with :meth:`Node.peer_resolved`."""

    name: str


Event = (
    PeerConnecting
    | PeerConnected
    | PeerDisconnected
    | PeerTimedOut
    | ClaimsChanged
    | StatsDue
    | BeaconStore
    | BeaconLoad
    | OwnAddressesDue
    | ResolvePeer
)


# --- tables ----------------------------------------------------------------------------------


@dataclass
class Peer:
    """An established peer (spec 10.1)."""

    crypto: PeerCrypto
    node_id: bytes
    addrs: list[SocketAddr]
    peer_timeout: int
    timeout: float
    last_seen: float
    connected_at: float
    claims: list[Range] = field(default_factory=list)
    #: Super-packet feature bits the peer announced (superpacket.py; 0 for the original).
    features: int = 0
    #: Super-packet reassembly state (superpacket.Reassembler), created on the first slice.
    reassembly: Any = None
    #: A session frame from the peer arrived (as initiator: our PENG got through).
    heard: bool = False


@dataclass
class ReconnectEntry:
    """A configured peer that is kept connected (spec 10.4)."""

    name: str
    addrs: list[SocketAddr]
    tries: int = 0
    timeout: float = 1.0
    next: float = 0.0
    next_resolve: float = 0.0
    resolvable: bool = True
    #: The "no answer" warning was logged for the current run of failed attempts.
    warned: bool = False


# --- the node --------------------------------------------------------------------------------


class Node:
    """One VpnCloud node, without any I/O. See the module docstring."""

    #: Super-packets (issue 9, see superpacket.py and bulk.py), switched on by the daemon with
    #: :meth:`enable_super_packets`. 0 = off: nothing is announced and the node behaves like 2.4.
    super_features: int = 0
    super_datagram: int = 0
    super_id: int = 0

    def __init__(
        self,
        config: NodeConfig,
        crypto: CryptoConfig,
        now: float,
        rng: Rng,
        node_id: bytes | None = None,
    ) -> None:
        self.config = config
        self.crypto = crypto
        self._rng = rng
        self.node_id = node_id if node_id is not None else rng.randbytes(NODE_ID_BYTES)
        if len(self.node_id) != NODE_ID_BYTES:
            raise ValueError("node id must be 16 bytes")
        self._parse = parse_packet if config.device_type is DeviceType.TUN else parse_frame
        self._learning = config.learning
        self._broadcast = config.broadcast

        self._peers: dict[SocketAddr, Peer] = {}
        self._pending: dict[SocketAddr, PeerCrypto] = {}
        self._reconnect: list[ReconnectEntry] = []
        self._base_addresses: list[SocketAddr] = []
        self._learned_addresses: list[SocketAddr] = []
        self._own_addresses: list[SocketAddr] = []
        self._own_mapped: set[SocketAddr] = set()
        self._local_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self._rebuild_own_addresses()

        self.table = ClaimTable(config.switch_timeout, config.peer_timeout)
        self.traffic = TrafficStats()

        # Trains / PacketRows only come from the batch paths (bulk.py); see take_output.
        self._out: list[tuple[bytes | Train, SocketAddr]] = []
        self._device_out: list[bytes | PacketRows | SuperPacketView] = []
        self._events: deque[Event] = deque()

        self._next_housekeep = now
        self._next_peers = now
        self._next_stats = now + config.stats_interval
        self._next_beacon = now
        self._next_own_address_reset = now + OWN_ADDRESS_RESET
        self._closed = False

        # Security additions (issue 10): handshake flood guard, optional ACL, key expiry.
        self.guard = HandshakeGuard(config.guard)
        self.acl: AclPolicy | None = None
        self._wall_now: float | None = None
        # Pending handshakes the peer started -> the PING that started them.
        self._inbound: dict[SocketAddr, bytes] = {}
        # ... and the PONG we answered it with, repeated only when that PING is repeated.
        self._inbound_reply: dict[SocketAddr, bytes] = {}
        self._proven_repeat: dict[SocketAddr, float] = {}
        # One line per interval for dropped datagrams, however many arrive (issue 24).
        self._drops = DropLog(log, config.guard.drop_log_interval)
        self.expired_key_refusals = 0
        #: handshakes by result since start (a fixed key set: ``HANDSHAKE_RESULTS``)
        self.handshakes: dict[str, int] = dict.fromkeys(HANDSHAKE_RESULTS, 0)
        #: Relays between our nodes (issue 22, relay.py); None = off, as the original.
        self.relay: RelayManager | None = None
        #: The synthetic source of the datagram the relay manager is delivering right now.
        self.relayed_from: SocketAddr | None = None

    # ------------------------------------------------------------------ outputs

    def datagrams_to_send(self) -> list[tuple[bytes, SocketAddr]]:
        out, self._out = self._out, []
        if self.relay is not None and self.relay.active:
            out = self.relay.wrap_output(out)
        return [(d, addr) for data, addr in out for d in _as_datagrams(data)]

    def take_output(self) -> list[tuple[bytes | Train, SocketAddr]]:
        """Like ``datagrams_to_send`` but a run of datagrams to one address may come as one
        :class:`~vpncloud.fastpath.rows.Train` (for senders with UDP GSO), in order with the rest."""
        out, self._out = self._out, []
        if self.relay is not None and self.relay.active:
            out = self.relay.wrap_output(out)
        return out

    def packets_to_device(self) -> list[bytes]:
        out, self._device_out = self._device_out, []
        flat: list[bytes] = []
        for p in out:
            if type(p) is PacketRows:
                flat.extend(p.packets())
            elif type(p) is SuperPacketView:
                flat.append(SuperPacket(p.data))
            else:
                flat.append(p)  # type: ignore[arg-type]
        return flat

    def take_device_output(self) -> list[bytes | PacketRows | SuperPacketView]:
        """Like ``packets_to_device`` but packets decrypted from one GRO train may come as one
        :class:`~vpncloud.fastpath.rows.PacketRows` and a super-packet as a
        :class:`~vpncloud.fastpath.superpacket.SuperPacketView` (for the offloading device writer), in
        order."""
        out, self._device_out = self._device_out, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float:
        return self._next_housekeep

    # ------------------------------------------------------------------ queries

    @property
    def peers(self) -> dict[SocketAddr, Peer]:
        """Established peers by mapped address (read-only view for the daemon and tests)."""
        return self._peers

    @property
    def pending(self) -> dict[SocketAddr, PeerCrypto]:
        return self._pending

    @property
    def own_addresses(self) -> list[SocketAddr]:
        return list(self._own_addresses)

    def remote_claims(self) -> list[tuple[Range, SocketAddr]]:
        """Claims of remote peers currently in the table (for kernel routes)."""
        return [(rng, peer) for rng, peer, _expiry in self.table.claims()]

    # ------------------------------------------------------------------ network side

    def receive_datagram(self, data: bytes, addr: SocketAddr, now: float) -> None:
        """Process one datagram received from ``addr`` (spec 4.2)."""
        if ":" not in addr[0]:
            addr = mapped(addr)
        elif len(addr) != 2:
            addr = (addr[0], addr[1])
        if addr[0][:5] == SYNTHETIC_PREFIX and addr != self.relayed_from:
            # A real source in the discard prefix must not pass for a relayed peer (relay.py).
            self.traffic.count_invalid_protocol(len(data), "unknown_peer")
            return
        # Per-address traffic only for known addresses: a flood from spoofed sources must not grow
        # the table (issue 10); admitted handshake messages from new sources are counted below.
        known = addr in self._peers or addr in self._pending
        if known:
            self.traffic.count_in_traffic(addr, len(data))
        if data[:1] == SLICE_MARK_BYTE and self.super_features:
            bulk.receive_slice(self, data, addr, now)
            return
        if data[:1] == b"\xff" and not self._init_admitted(data, addr, now, count=not known):
            return
        if addr in self._inbound and data == self._inbound[addr]:
            # The initiator repeats the PING we verified (byte-identical): answer it with our PONG again,
            # without another signature check. This is the only way an unverified address gets a PONG
            # repeated: never on our own timer (issue 24).
            self._repeat_reply(addr, now)
            return
        pending = self._pending.get(addr)
        if pending is not None:
            self._handle_pending(pending, data, addr, now)
            return
        peer = self._peers.get(addr)
        if data[:1] == b"\xff":
            if peer is not None and peer.crypto.has_init:
                self._handle_peer(peer, data, addr, now)
            else:
                self._handle_new_init(data, addr, now, established=peer is not None)
            return
        if peer is not None:
            self._handle_peer(peer, data, addr, now)
            return
        self.traffic.count_invalid_protocol(len(data), "unknown_peer")
        self._drops.drop(
            "unknown_peer",
            now,
            logging.INFO,
            "Ignoring non-init message from unknown peer %s",
            _fmt(addr),
        )

    def _init_admitted(self, data: bytes, addr: SocketAddr, now: float, *, count: bool = False) -> bool:
        """Flood guard for handshake messages, BEFORE any signature check (see ``guard.py``).

        Order: bytes that failed their signature before (one lookup, from any address); per-address
        bucket; cheap key-hash lookup (untrusted messages are dropped here, before any parse, responder
        object or global token); expired keys; replayed PINGs; global bucket.
        """
        guard = self.guard
        if data in guard.bad_signatures:
            guard.note_bad_signature()
            self.traffic.count_invalid_protocol(len(data), "authentication")
            self._drops.drop("bad_signature", now, logging.ERROR, "Crypto error: invalid signature (again)")
            return False
        # Addresses that proved they receive (sessions) or that we contacted ourselves.
        verified = addr in self._peers or (addr in self._pending and addr not in self._inbound)
        if not guard.allow_source(addr, now, known=verified):
            self._note_guard_drop(now)
            return False
        identity = self.crypto.identity
        key = identity.find_trusted(bytes(data[1:5]), bytes(data[5:9])) if len(data) >= 9 else None
        if key is None:
            guard.note_untrusted()
            self.handshakes["rejected"] += 1
            self.traffic.count_invalid_protocol(len(data), "authentication")
            self._drops.drop("untrusted", now, logging.ERROR, "Crypto error: untrusted peer (%s)", _fmt(addr))
            return False
        wall = self._wall_now
        if (
            wall is not None
            and identity.is_expired(key, wall)
            and identity.find_trusted(bytes(data[1:5]), bytes(data[5:9]), wall) is None
        ):
            self.expired_key_refusals += 1
            self.traffic.count_invalid_protocol(len(data), "expired_key")
            self._drops.drop(
                "expired_key",
                now,
                logging.WARNING,
                "Refusing handshake from %s: its trusted key has expired",
                _fmt(addr),
            )
            return False
        if self._ping_key(data, addr, now) is None:
            return False  # a PING answered elsewhere: dropped before it costs a global token
        if addr not in self._peers:
            guard.note_received(addr, len(data), now)
        if not guard.allow_global(now, addr[0]):
            self._note_guard_drop(now)
            return False
        if count:
            self.traffic.count_in_traffic(addr, len(data))
        return True

    def _note_guard_drop(self, now: float) -> None:
        self.traffic.count_invalid_protocol(0, "flood_guard")
        if self._drops.quiet("flood_guard", now):
            return
        c = self.guard.counters
        self._drops.drop(
            "flood_guard",
            now,
            logging.WARNING,
            "Rate-limiting handshake messages (dropped so far: %d per address, %d new addresses, %d global)",
            c.dropped_source + c.dropped_overflow,
            c.dropped_new_address,
            c.dropped_global,
        )

    def _send_budgeted(self, data: bytes, addr: SocketAddr, now: float) -> None:
        """Send a handshake reply; to a peer that started the handshake only within its byte budget."""
        if (
            addr in self._inbound
            and addr not in self._peers
            and not self.guard.may_send(addr, len(data), now)
        ):
            return
        self._send(data, addr)

    def _repeat_reply(self, addr: SocketAddr, now: float) -> None:
        reply = self._inbound_reply.get(addr)
        if reply is not None:
            self._send_budgeted(reply, addr, now)

    def _start_inbound(self, addr: SocketAddr, ping: bytes, crypto: PeerCrypto) -> None:
        """Register a handshake the peer started; over ``max_pending`` the oldest such one goes."""
        evict = self.guard.pending_started(addr)
        if evict is not None:
            self._pending.pop(evict, None)
            self._inbound.pop(evict, None)
            self._inbound_reply.pop(evict, None)
            self._proven_repeat.pop(evict, None)
        self._pending[addr] = crypto
        self._inbound[addr] = ping

    def _forget_inbound(self, addr: SocketAddr) -> None:
        self._inbound_reply.pop(addr, None)
        self._proven_repeat.pop(addr, None)
        if self._inbound.pop(addr, None) is not None:
            self.guard.pending_ended(addr)

    def _ping_key(self, data: bytes, addr: SocketAddr, now: float) -> bytes | None:
        """The ephemeral key of a PING, b"" for other stages; None if the PING is a replay from elsewhere."""
        key = self.guard.verified_ping_key(data)
        if key is None:
            key = ping_ephemeral_key(data)
            if key is None:
                return b""  # not a PING, or malformed: rejected with its error by the normal path
        if not self.guard.ping_allowed(key, addr, now):
            self.traffic.count_invalid_protocol(len(data), "replay")
            self._drops.drop(
                "replayed_ping",
                now,
                logging.WARNING,
                "Ignoring a PING already answered elsewhere, from %s",
                _fmt(addr),
            )
            return None
        return key

    def _handle_new_init(self, data: bytes, addr: SocketAddr, now: float, *, established: bool) -> None:
        ping_key = self._ping_key(data, addr, now)
        if ping_key is None:
            return
        if ping_key and not self.guard.pending_allowed(addr):
            self.traffic.count_invalid_protocol(len(data), "flood_guard")
            self._drops.drop(
                "pending_limit",
                now,
                logging.WARNING,
                "Too many pending handshakes from %s",
                _fmt(addr),
            )
            return
        crypto = PeerCrypto.responder(self.crypto, self.node_id, self._node_info_bytes(), self._rng)
        try:
            result = crypto.handle_message(data)
        except InitFatal as err:
            # The original counts these (stray PENGs, quirk 17) as one packet of 0 bytes.
            self.traffic.count_invalid_protocol(0, "authentication")
            self.handshakes["rejected"] += 1
            log.debug("Fatal crypto init error from %s: %s", format_sockaddr(addr), err)
            if not established:
                # Quirk 17 guard: only a source without a session is reported as disconnected.
                log.info("Closing pending connection to %s due to error in crypto init", _fmt(addr))
                self._events.append(PeerDisconnected(nice(addr), None))
            return
        except (CryptoError, DecodeError) as err:
            if isinstance(err, SignatureError):
                self.guard.record_bad_signature(bytes(data))
            reason = drop_reason(err)
            self.traffic.count_invalid_protocol(len(data), reason)
            self.handshakes["rejected"] += 1
            self._drops.drop(reason, now, logging.ERROR, "Crypto error: %s", err)
            return
        if ping_key:
            self.guard.record_ping(ping_key, addr, now, bytes(data))
        if isinstance(result, Reply):
            self._start_inbound(addr, data, crypto)
            self._inbound_reply[addr] = result.data
            self._events.append(PeerConnecting(nice(addr)))
            self._send_budgeted(result.data, addr, now)
        elif isinstance(result, Initialized):
            # A responder cannot complete with its first message; tolerate it anyway.
            self._handshake_done(crypto, result, addr, now)

    def _handle_pending(self, crypto: PeerCrypto, data: bytes, addr: SocketAddr, now: float) -> None:
        first = self._inbound.get(addr)
        if first is not None and data != first and _is_ping(data):
            # A different PING for a handshake the peer started: the initiator restarted, or the
            # first PING was a replay (by an attacker spoofing this address). The original answers
            # with its stale PONG, which the new initiator cannot use, for up to 120 ticks; we answer
            # the new PING afresh, but only if it verifies (else the old state stays).
            old = self._pending.pop(addr)
            old_reply = self._inbound_reply.pop(addr, None)
            self._inbound.pop(addr, None)
            self._handle_new_init(data, addr, now, established=addr in self._peers)
            if addr not in self._pending:
                self._pending[addr] = old
                self._inbound[addr] = first
                if old_reply is not None:
                    self._inbound_reply[addr] = old_reply
            return
        try:
            result = crypto.handle_message(data)
        except InitFatal as err:
            self.traffic.count_invalid_protocol(len(data), "authentication")
            self._drop_pending(addr, str(err))
            return
        except (CryptoError, DecodeError) as err:
            reason = drop_reason(err)
            self.traffic.count_invalid_protocol(len(data), reason)
            self._drops.drop(reason, now, logging.ERROR, "Crypto error: %s", err)
            if (
                data[:1] != b"\xff"
                and addr in self._inbound
                and now >= self._proven_repeat.get(addr, now)
                and crypto.proves_receipt(data)
            ):
                # Session traffic before the PENG: the PENG was lost, and the initiator only repeats
                # it in answer to a repeated PONG (which we do not send on a timer). The frame opened
                # with the key of our PONG, so the address receives: repeat the PONG, once a tick.
                self._proven_repeat[addr] = now + TICK
                reply = self._inbound_reply.get(addr)
                if reply is not None:
                    self._send(reply, addr)
            return
        if isinstance(result, Reply):
            self._send_budgeted(result.data, addr, now)
        elif isinstance(result, Initialized):
            self._handshake_done(crypto, result, addr, now)
        elif isinstance(result, Message):
            # A session message on a handshake that is not finished (e.g. DATA overtaking the PENG).
            self.traffic.count_invalid_protocol(len(data))

    def _handle_peer(
        self, peer: Peer, data: bytes, addr: SocketAddr, now: float, plain: bytes | None = None
    ) -> None:
        """A datagram of an established peer. A batch path (bulk.py) that decrypted it already passes
        its ``plain``text: decrypting it again would find its nonce taken (the replay window). One
        path for both, so that both count, drop and log alike."""
        crypto = peer.crypto
        try:
            result = crypto.handle_message(data) if plain is None else crypto.handle_plain(plain)
        except InitFatal as err:
            self.traffic.count_invalid_protocol(len(data), "authentication")
            log.debug("Fatal crypto init error from %s: %s", format_sockaddr(addr), err)
            return
        except (CryptoError, DecodeError) as err:
            reason = drop_reason(err)
            self.traffic.count_invalid_protocol(len(data), reason)
            # replays are counted, and logged at debug level only: even aggregated, a replay flood is
            # not an error of ours
            level = logging.DEBUG if reason == "replay" else logging.ERROR
            self._drops.drop(reason, now, level, "Crypto error: %s", err)
            return
        if not isinstance(result, (Reply, Initialized)):
            peer.heard = True
        if isinstance(result, Message):
            self._handle_message(peer, result.msg_type, result.payload, addr, now)
        elif isinstance(result, Reply):
            self._send(result.data, addr)
        elif isinstance(result, Initialized):
            self._handshake_done(peer.crypto, result, addr, now)

    def _handle_message(
        self, peer: Peer, msg_type: int, payload: bytes, addr: SocketAddr, now: float
    ) -> None:
        if msg_type == messages.MSG_DATA:
            try:
                src, dst = self._parse(payload)
            except DecodeError as err:
                self.traffic.count_invalid_protocol(len(payload))
                self._drops.drop(
                    "malformed",
                    now,
                    logging.ERROR,
                    "Invalid payload from %s: %s",
                    _fmt(addr),
                    err,
                )
                return
            if self.acl is not None and self._acl_denies(payload, now, outbound=False):
                return
            self.traffic.count_in_payload(src, dst, len(payload))
            self._device_out.append(payload)
            if self._learning:
                self.table.learn(src, addr, now)
        elif msg_type == messages.MSG_NODE_INFO:
            try:
                info = NodeInfo.decode(payload)
            except DecodeError as err:
                self.traffic.count_invalid_protocol(len(payload))
                self._drops.drop("malformed", now, logging.ERROR, "Message error: %s", err)
                return
            peer.features = decode_features(payload)
            self._update_peer_info(peer, addr, info, now)
        elif msg_type == messages.MSG_KEEPALIVE:
            peer.timeout = now + self.config.peer_timeout
            peer.last_seen = now
        elif msg_type == messages.MSG_CLOSE:
            log.info("Closing connection to %s", _fmt(addr))
            self._remove_peer(addr)
            self._events.append(PeerDisconnected(addr, peer.node_id, raw_addr=True))
        elif msg_type in (MSG_RELAY_TO, MSG_RELAY_FROM, MSG_RELAY_REFUSED) and self.relay is not None:
            self.relay.on_message(peer, addr, msg_type, payload, now)
        else:
            self.traffic.count_invalid_protocol(len(payload))
            self._drops.drop(
                "malformed",
                now,
                logging.ERROR,
                "Message error: Unknown message type %d",
                msg_type,
            )

    # ------------------------------------------------------------------ handshakes and peers

    def _handshake_done(self, crypto: PeerCrypto, result: Initialized, addr: SocketAddr, now: float) -> None:
        try:
            info = NodeInfo.decode(result.node_info)
        except DecodeError as err:
            log.error("Invalid node info in handshake from %s: %s", _fmt(addr), err)
            self.handshakes["failed"] += 1
            self._pending.pop(addr, None)
            self._forget_inbound(addr)
            return
        self._pending.pop(addr, None)
        self._forget_inbound(addr)
        self.guard.forget(addr)
        existing = self._peers.get(addr)
        if existing is not None and existing.crypto is crypto:
            # A repeated PONG answered from the kept handshake state: the peer is already there.
            if result.reply is not None:
                self._send(result.reply, addr)
            return
        peer = Peer(
            crypto=crypto,
            node_id=info.node_id,
            addrs=list(info.addrs),
            peer_timeout=info.peer_timeout if info.peer_timeout is not None else DEFAULT_PEER_TIMEOUT,
            timeout=now + self.config.peer_timeout,
            last_seen=now,
            connected_at=now,
        )
        if existing is not None:
            self.table.remove_claims(addr)
        log.info("Added peer %s", _fmt(addr))
        self.handshakes["completed"] += 1
        self._events.append(PeerConnected(nice(addr), info.node_id, list(info.claims)))
        self._peers[addr] = peer
        self.guard.remember_peer(addr[0], now)
        peer.features = decode_features(result.node_info)
        if result.reply is not None:
            self._send(result.reply, addr)
        self._update_peer_info(peer, addr, info, now)

    def _update_peer_info(self, peer: Peer, addr: SocketAddr, info: NodeInfo, now: float) -> None:
        """Spec 9.3: refresh, replace addresses and claims, connect to the peers it knows."""
        peer.timeout = now + self.config.peer_timeout
        peer.last_seen = now
        addrs = [addr]
        for a in info.addrs:
            if a not in addrs:
                addrs.append(a)
        peer.addrs = addrs
        if peer.node_id != info.node_id:
            peer.node_id = info.node_id
        if peer.claims != info.claims:
            peer.claims = list(info.claims)
            self._events.append(ClaimsChanged())
        self._route_claims(peer, addr, info, now)
        if self.relay is not None:
            self.relay.note_node_info(peer, addr, info, now)
        known_ids = {p.node_id for p in self._peers.values()}
        for entry in info.peers:
            if any(a in self._peers for a in entry.addrs):
                continue
            if entry.node_id == self.node_id:
                for a in entry.addrs:
                    if a not in self._learned_addresses and mapped(a) not in self._own_mapped:
                        self._learned_addresses.append(a)
                        self._rebuild_own_addresses()
                continue
            if entry.node_id is not None and entry.node_id in known_ids:
                continue
            self.connect(entry.addrs, now)

    def _route_claims(self, peer: Peer, addr: SocketAddr, info: NodeInfo, now: float) -> None:
        """Put the peer's claims into the table, preferring a session over our LAN (ours).

        The original routes to whichever session announced the claims last. When the same node is
        reachable both through a NAT/public address and directly on our LAN, we route to the LAN
        session and connect to its LAN address if we have no session there yet.
        """
        local = self._is_local(addr)
        twins = [a for a, p in self._peers.items() if a != addr and p.node_id == peer.node_id]
        if not local and any(self._is_local(a) for a in twins):
            self.table.remove_claims(addr)
        else:
            self.table.set_claims(addr, list(info.claims), now)
            if local:
                for other in twins:
                    self.table.remove_claims(other)
        if local or not self._local_networks:
            return
        candidates = [
            mapped(a)
            for a in info.addrs
            if self._is_local(a)
            and mapped(a) not in self._peers
            and mapped(a) not in self._pending
            and mapped(a) not in self._own_mapped
        ]
        if candidates:
            log.info("Peer %s is also on our LAN; connecting to %s directly", _fmt(addr), _fmt(candidates[0]))
            self.connect(candidates, now)

    def _remove_peer(self, addr: SocketAddr) -> Peer | None:
        peer = self._peers.pop(addr, None)
        if peer is not None:
            self.table.remove_claims(addr)
            if peer.claims:
                self._events.append(ClaimsChanged())
        return peer

    def _drop_pending(self, addr: SocketAddr, reason: str) -> None:
        self.handshakes["failed"] += 1
        self._pending.pop(addr, None)
        self._forget_inbound(addr)
        log.info("Closing pending connection to %s due to error in crypto init (%s)", _fmt(addr), reason)
        self._events.append(PeerDisconnected(nice(addr), None))

    def connect(self, addrs: list[SocketAddr], now: float) -> None:
        """Start handshakes to a node known by these addresses (spec 10.2)."""
        if not addrs or self._closed:
            return
        try:
            targets = [mapped(a) for a in addrs]
        except DecodeError:
            return
        for a in targets:
            if a in self._own_mapped or a in self._peers or a in self._pending:
                return
        self._events.append(PeerConnecting(nice(targets[0])))
        node_info = self._node_info_bytes()
        for a in targets:
            if a in self._pending:
                continue
            crypto, ping = PeerCrypto.initiator(self.crypto, self.node_id, node_info, self._rng)
            self._pending[a] = crypto
            self._send(ping, a)

    def add_configured_peer(self, name: str, addrs: list[SocketAddr], now: float) -> None:
        """A peer from the config: connect now and keep reconnecting (spec 10.4)."""
        resolved = [mapped(a) for a in addrs]
        self.connect(resolved, now)
        literal = True
        try:
            parse_sockaddr(name)
        except DecodeError:
            literal = False
        self._reconnect.append(
            ReconnectEntry(
                name=name,
                addrs=resolved,
                next=now,
                next_resolve=now + RESOLVE_INTERVAL,
                resolvable=not literal,
            )
        )

    def remove_configured_peer(self, name: str) -> None:
        self._reconnect = [e for e in self._reconnect if e.name != name]

    def configured_peers(self) -> list[str]:
        return [e.name for e in self._reconnect]

    def peer_resolved(self, name: str, addrs: list[SocketAddr], now: float) -> None:
        for entry in self._reconnect:
            if entry.name == name and addrs:
                entry.addrs = [mapped(a) for a in addrs]

    def beacon_loaded(self, addrs: list[SocketAddr], now: float) -> None:
        """Addresses decoded from a beacon: connect to each one (spec 15.6)."""
        for a in addrs:
            self.connect([a], now)

    def set_own_addresses(self, addrs: list[SocketAddr], local_networks: list[str] | None = None) -> None:
        """The primary address(es) of this host, found by the daemon (spec 10.5 item 2).

        ``local_networks`` are the prefixes of the LANs this host is on (LAN awareness, ours): a peer
        also reachable at an address inside them is talked to directly. Without it, the /24 (IPv4)
        or /64 (IPv6) around each address is assumed.
        """
        self._base_addresses = [mapped(a) for a in addrs]
        if local_networks is None:
            local_networks = [
                f"{nice(a)[0]}/24" if "." in nice(a)[0] else f"{a[0]}/64" for a in self._base_addresses
            ]
        nets = []
        for text in local_networks:
            try:
                nets.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                log.warning("Ignoring invalid local network %r", text)
        self._local_networks = nets
        self._rebuild_own_addresses()

    def _is_local(self, addr: SocketAddr) -> bool:
        """Whether ``addr`` lies in one of our LANs (never true for our own addresses)."""
        if not self._local_networks:
            return False
        try:
            ip = ipaddress.ip_address(nice(addr)[0])
        except ValueError:
            return False
        return any(ip.version == net.version and ip in net for net in self._local_networks)

    def _rebuild_own_addresses(self) -> None:
        own: list[SocketAddr] = []
        for a in [*self.config.advertise_addresses, *self._base_addresses, *self._learned_addresses]:
            if a not in own:
                own.append(a)
        self._own_addresses = own
        self._own_mapped = {mapped(a) for a in own}

    # ------------------------------------------------------------------ device side

    def _acl_denies(self, data: bytes, now: float, *, outbound: bool) -> bool:
        """Whether the ACL refuses this packet/frame; a refused one counts as dropped payload."""
        assert self.acl is not None
        if self.acl.check(data, now, outbound=outbound, frame=self.config.device_type is DeviceType.TAP):
            return False
        self.traffic.count_dropped_payload(len(data), "acl")
        return True

    def receive_packet(self, packet: bytes, now: float) -> None:
        """Forward one packet/frame read from the device (spec 11.2)."""
        try:
            src, dst = self._parse(packet)
        except DecodeError as err:
            log.error("Invalid packet from device: %s", err)
            return
        if self.acl is not None and self._acl_denies(packet, now, outbound=True):
            return
        self.traffic.count_out_payload(dst, src, len(packet))
        target = self.table.lookup(dst, now)
        if target is not None:
            peer = self._peers.get(target)
            if peer is not None:
                self._send(peer.crypto.send_message(messages.MSG_DATA, packet), target)
                return
            # Quirk 13 guard: the claim outlived its peer; try to reach it again.
            self.connect([target], now)
        elif self._broadcast:
            # One copy per node: the original sends one per session, and a node reached under two
            # addresses (IPv4 and IPv6, quirk 15) would get every broadcast frame twice.
            seen: set[bytes] = set()
            for addr, peer in self._peers.items():
                if peer.node_id in seen:
                    continue
                seen.add(peer.node_id)
                self._send(peer.crypto.send_message(messages.MSG_DATA, packet), addr)
            return
        self.traffic.count_dropped_payload(len(packet))

    # ------------------------------------------------------------------ batch data path (bulk.py)

    def receive_packets(self, packets: list[bytes], now: float) -> None:
        """Packets from the device with one source and destination (segments of one super-packet);
        the same as ``receive_packet`` for each, with the per-packet work done once."""
        bulk.send_packets(self, packets, now)

    def enable_super_packets(self, features: int, max_datagram: int) -> None:
        """Announce super-packets (``superpacket.FEATURE_*`` bits) in every NODE_INFO from now on and
        cut them into datagrams of at most ``max_datagram`` bytes. 0 switches them off."""
        self.super_features = features
        self.super_datagram = max_datagram

    def receive_super_packet(
        self, data: bytes, segments: Callable[[], list[bytes] | PacketRows], now: float
    ) -> None:
        """A super-packet from an offloading device (virtio header + packet). It goes to a peer that
        takes super-packets as one; otherwise ``segments()`` gives the ordinary packets to send."""
        bulk.send_super(self, data, segments, now)

    def receive_train(self, data: bytes, seg: int, addr: SocketAddr, now: float) -> None:
        """A GRO train: datagrams of ``seg`` bytes back to back in ``data`` (the last may be
        shorter), all from ``addr``; the same as ``receive_datagram`` for each."""
        bulk.receive_train(self, data, seg, addr, now)

    def receive_datagrams(self, datagrams: list[bytes], addr: SocketAddr, now: float) -> None:
        """Datagrams from one source (a GRO train); the same as ``receive_datagram`` for each."""
        bulk.receive_datagrams(self, datagrams, addr, now)

    # ------------------------------------------------------------------ messages out

    def _send(self, data: bytes, addr: SocketAddr) -> None:
        if not data:
            return
        self.traffic.count_out_traffic(addr, len(data))
        self._out.append((data, addr))

    def _node_info(self) -> NodeInfo:
        peers = list(self._peers.values())
        if len(peers) > MAX_NODE_INFO_PEERS:
            # Partial shuffle: a random subset, as the original (spec 9.2).
            for i in range(MAX_NODE_INFO_PEERS):
                j = i + int(self._rng.random() * (len(peers) - i))
                peers[i], peers[j] = peers[j], peers[i]
            peers = peers[:MAX_NODE_INFO_PEERS]
        return NodeInfo(
            node_id=self.node_id,
            # Synthetic "via relay" addresses (relay.py) never leave the node.
            peers=[
                PeerInfo(node_id=p.node_id, addrs=addrs)
                for p in peers
                if (addrs := [a for a in p.addrs if not is_synthetic(a)])
            ],
            claims=list(self.config.claims),
            peer_timeout=self.config.peer_timeout & 0xFFFF,
            addrs=list(self._own_addresses),
        )

    def _node_info_bytes(self) -> bytes:
        relay = self.relay.config.features if self.relay is not None else 0
        return add_features(self._node_info().encode(), self.super_features | relay)

    def _broadcast_node_info(self, only: Callable[[SocketAddr, Peer], bool] | None = None) -> None:
        """NODE_INFO to every peer, or to those ``only`` admits (the relay's early announcement)."""
        payload = self._node_info_bytes()
        if only is None:
            log.debug("Broadcasting message type 1, %d bytes to %d peers", len(payload), len(self._peers))
        for addr, peer in self._peers.items():
            if only is not None and not only(addr, peer):
                continue
            try:
                self._send(peer.crypto.send_message(messages.MSG_NODE_INFO, payload), addr)
            except VpnCloudError as err:
                log.error("Failed to send node info to %s: %s", _fmt(addr), err)

    def _node_info_interval(self) -> float:
        """Spec 9.6, with signed arithmetic instead of the original's wrap-around (quirk 11)."""
        own = self.config.peer_timeout
        keepalive = self.config.keepalive if self.config.keepalive else max(own // 2 - 60, 1)
        min_timeout = min((p.peer_timeout for p in self._peers.values()), default=DEFAULT_PEER_TIMEOUT)
        return float(min(keepalive, max(min_timeout // 2 - 60, 1)))

    # ------------------------------------------------------------------ housekeeping

    def handle_timer(self, now: float) -> None:
        """Run housekeeping if it is due (spec 2.3)."""
        if now < self._next_housekeep:
            return
        self._next_housekeep = now + TICK
        try:
            self._housekeep(now)
        except VpnCloudError as err:
            log.error("Housekeeping error: %s", err)

    def _housekeep(self, now: float) -> None:
        # 1. peers that timed out
        for addr in [a for a, p in self._peers.items() if p.timeout < now]:
            peer = self._remove_peer(addr)
            log.info("Forgot peer %s due to timeout", _fmt(addr))
            if peer is not None:
                self._events.append(PeerTimedOut(nice(addr), peer.node_id))
            self.connect([addr], now)
        # 2. claim table
        self.table.housekeep(now)
        self._drops.flush(now)
        # 2b. security additions: idle ACL flows, peers whose trusted key expired
        if self.acl is not None:
            self.acl.expire(now)
        if self._wall_now is not None:
            self._close_expired_peers(now)
        # 3. crypto ticks: retransmissions, rotation, replay window
        for addr, crypto in list(self._pending.items()):
            try:
                msg = crypto.every_tick()
            except InitFatal as err:
                self._drop_pending(addr, str(err))
                if addr in self._peers:
                    self._remove_peer(addr)
                    self.connect([addr], now)
                continue
            if msg and addr not in self._inbound:
                # Only handshakes we started repeat on our timer; a responder repeats its PONG in
                # answer to a repeated PING (an unverified address must not get datagrams unasked).
                self._send(msg, addr)
        for addr, peer in list(self._peers.items()):
            try:
                msg = peer.crypto.every_tick()
            except InitFatal as err:
                log.error("Crypto error with %s: %s", _fmt(addr), err)
                self._remove_peer(addr)
                self.connect([addr], now)
                continue
            if msg:
                self._send(msg, addr)
            elif (
                not peer.heard
                and peer.crypto.handshake_initiator
                and now - peer.connected_at <= PENG_PROBE_TICKS * TICK
            ):
                # Our PENG may be lost, and a responder that follows issue 24 does not repeat its
                # PONG unasked; a session frame proves we got the PONG and earns it again.
                self._send(peer.crypto.send_message(messages.MSG_KEEPALIVE, b""), addr)
        # 5. NODE_INFO broadcast
        if self._next_peers <= now:
            self._broadcast_node_info()
            self._next_peers = now + self._node_info_interval()
        # 6. configured peers
        self._reconnect_tick(now)
        # 6b. relayed peers: relay choice, direct retries, moving back (ours, relay.py)
        if self.relay is not None:
            self.relay.tick(now)
        # 7. statistics
        if self._next_stats < now:
            self._events.append(StatsDue(self._stats_text(now), self._statsd_text()))
            self.traffic.period()
            self._next_stats = now + self.config.stats_interval
        # 9. beacons
        if (self.config.beacon_store or self.config.beacon_load) and self._next_beacon < now:
            if self.config.beacon_store:
                self._events.append(BeaconStore(self._make_beacon(now)))
            if self.config.beacon_load:
                self._events.append(BeaconLoad())
            self._next_beacon = now + self.config.beacon_interval
        # 10. own addresses
        if self._next_own_address_reset <= now:
            self._learned_addresses = []
            self._rebuild_own_addresses()
            self._events.append(OwnAddressesDue())
            self._next_own_address_reset = now + OWN_ADDRESS_RESET

    def _close_expired_peers(self, now: float) -> None:
        identity = self.crypto.identity
        assert self._wall_now is not None
        for addr, peer in list(self._peers.items()):
            key = peer.crypto.peer_public_key
            if key is not None and identity.is_expired(key, self._wall_now):
                log.warning("Closing connection to %s: its trusted key has expired", _fmt(addr))
                with contextlib.suppress(VpnCloudError):
                    self._send(peer.crypto.send_message(messages.MSG_CLOSE, b""), addr)
                self._remove_peer(addr)
                self._events.append(PeerDisconnected(nice(addr), peer.node_id))

    def _reconnect_tick(self, now: float) -> None:
        for entry in self._reconnect:
            if entry.next <= now:
                self.connect(entry.addrs, now)
        for entry in self._reconnect:
            if any(a in self._peers for a in entry.addrs):
                # Connected: reset the back-off, but still re-resolve below so a moved name is followed.
                entry.tries = 0
                entry.timeout = 1.0
                entry.next = now + 1.0
                entry.warned = False
            if entry.resolvable and entry.next_resolve <= now:
                self._events.append(ResolvePeer(entry.name))
                entry.next_resolve = now + RESOLVE_INTERVAL
            if entry.next > now:
                continue
            entry.tries += 1
            if entry.tries > RECONNECT_TRIES_PER_STEP:
                if not entry.warned:
                    # The original retries silently forever; say once per outage what usually causes it.
                    entry.warned = True
                    log.warning(
                        "No connection to %s after %d attempts; retrying at growing intervals. Check "
                        "the address, that its UDP port is reachable (firewall, NAT port forwarding) and "
                        "that both nodes use the same password or trust each other's keys. Symmetric "
                        "NATs defeat hole punching: such a node needs a peer with a public address or a "
                        "WebSocket proxy.",
                        entry.name,
                        RECONNECT_TRIES_PER_STEP,
                    )
                entry.tries = 0
                entry.timeout = min(entry.timeout * 2, RECONNECT_MAX_TIMEOUT)
            entry.next = now + entry.timeout

    def _make_beacon(self, now: float) -> str:
        addrs = list(self._own_addresses)
        # Up to three random own addresses (spec 15.6).
        for i in range(min(3, len(addrs))):
            j = i + int(self._rng.random() * (len(addrs) - i))
            addrs[i], addrs[j] = addrs[j], addrs[i]
        return encode_beacon(addrs[:3], self.config.beacon_password, hour_stamp(now))

    # ------------------------------------------------------------------ stats and status

    def _stats_text(self, now: float) -> str:
        peers = [
            (addr, max(int(p.timeout - now), 0), _algorithm_name(p.crypto)) for addr, p in self._peers.items()
        ]
        return self.traffic.stats_text(peers, self.table.claims(), self.table.cache(), now)

    def _statsd_text(self) -> str | None:
        if self.config.statsd_prefix is None:
            return None
        return self.traffic.statsd_text(
            self.config.statsd_prefix, len(self._peers), self.table.cache_len(), self.table.claims_len()
        )

    def status(self, now: float) -> dict[str, Any]:
        """A JSON-able snapshot for ``vpncloud status`` (no secrets)."""
        peers = []
        for addr, p in self._peers.items():
            peers.append(
                {
                    "addr": format_sockaddr(nice(addr)),
                    "node_id": p.node_id.hex(),
                    "addrs": [format_sockaddr(nice(a)) for a in p.addrs],
                    "algorithm": _algorithm_name(p.crypto),
                    "connected_secs": round(now - p.connected_at, 1),
                    "last_seen_secs": round(now - p.last_seen, 1),
                    "ttl_secs": max(int(p.timeout - now), 0),
                    "claims": [str(c) for c in p.claims],
                    "rotation": _rotation_info(p.crypto),
                    "traffic": _peer_traffic(self.traffic, addr),
                }
            )
        return {
            "node_id": self.node_id.hex(),
            "mode": self.config.mode.value,
            "device_type": self.config.device_type.value,
            "own_addresses": [format_sockaddr(nice(a)) for a in self._own_addresses],
            "claims": [str(c) for c in self.config.claims],
            "peers": peers,
            "pending": [format_sockaddr(nice(a)) for a in self._pending],
            "configured_peers": [
                {
                    "name": e.name,
                    "addrs": [format_sockaddr(nice(a)) for a in e.addrs],
                    "retry_secs": e.timeout,
                }
                for e in self._reconnect
            ],
            "table": {
                "claims": [
                    {"range": str(r), "peer": format_sockaddr(nice(p)), "ttl_secs": max(int(exp - now), 0)}
                    for r, p, exp in self.table.claims()
                ],
                "cache": [
                    {
                        "addr": _addr_text(a),
                        "peer": format_sockaddr(nice(p)),
                        "ttl_secs": max(int(exp - now), 0),
                    }
                    for a, p, exp in self.table.cache()
                ],
            },
            "traffic": self.traffic.snapshot(),
            "handshakes": dict(self.handshakes),
            "security": {
                "handshake_guard": self.guard.snapshot(),
                # the limits in force: a reload keeps the running guard, so the file may differ
                "handshake_guard_limits": asdict(self.guard.config),
                "expired_key_refusals": self.expired_key_refusals,
                "acl": self.acl.snapshot() if self.acl is not None else None,
            },
            "relay": self.relay.snapshot() if self.relay is not None else None,
        }

    # ------------------------------------------------------------------ control

    def reconfigure(self, config: NodeConfig, crypto: CryptoConfig, now: float) -> None:
        """Apply a reloaded configuration without dropping sessions (SIGHUP; the original cannot).

        Device type, mode and port need a restart and are kept as they are. Established peers whose
        identity is no longer trusted are closed.
        """
        config.device_type = self.config.device_type
        config.mode = self.config.mode
        config.port = self.config.port
        if config.guard != self.config.guard:
            # a new guard would forget every budget and pending handshake it tracks: a flood's
            # attacker could provoke reloads to reset them
            log.warning("handshake-guard limits changed: they apply at the next restart")
            config.guard = self.config.guard
        claims_changed = config.claims != self.config.claims
        self.config = config
        if crypto.identity.trusted_keys != self.crypto.identity.trusted_keys:
            self.guard.keys_changed()
        self.crypto = crypto
        self.table.cache_timeout = config.switch_timeout
        self.table.claim_timeout = config.peer_timeout
        self._rebuild_own_addresses()
        trusted = set(crypto.identity.trusted_keys)
        for addr, peer in list(self._peers.items()):
            key = getattr(peer.crypto, "peer_public_key", None)
            if key is not None and key not in trusted:
                log.info("Closing connection to %s: its key is no longer trusted", _fmt(addr))
                self._send(peer.crypto.send_message(messages.MSG_CLOSE, b""), addr)
                self._remove_peer(addr)
                self._events.append(PeerDisconnected(nice(addr), peer.node_id))
        if claims_changed:
            # Tell peers about the new claims now rather than at the next interval.
            self._next_peers = now

    def enable_relays(self, config: RelayConfig, now: float | None = None) -> None:
        """Relay for peers and/or reach peers through relays (issue 22); announced from the next
        NODE_INFO on (at ``now``, or at the next housekeeping)."""
        self.relay = RelayManager(self, config, self._next_housekeep if now is None else now)
        self._next_peers = self._next_housekeep if now is None else now

    def set_relays(self, config: RelayConfig | None) -> None:
        """Apply a (re)loaded relay configuration; None drops relayed sessions and stops relaying."""
        if config is None:
            if self.relay is not None:
                for addr in [a for a in [*self._peers, *self._pending] if is_synthetic(a)]:
                    self.drop_relayed(addr, self._peers.get(addr), announce=True)
                self.relay = None
                self._next_peers = self._next_housekeep
        elif self.relay is None:
            self.enable_relays(config)
        elif config != self.relay.config:
            self.relay.reconfigure(config)
            self._next_peers = self._next_housekeep

    def drop_relayed(self, addr: SocketAddr, peer: Peer | None, *, announce: bool) -> None:
        """Forget a relayed session or handshake (moved to direct, or its relay is gone)."""
        self._pending.pop(addr, None)
        self._inbound.pop(addr, None)
        if peer is not None and self._remove_peer(addr) is not None and announce:
            self._events.append(PeerDisconnected(addr, peer.node_id))

    def set_acl(self, policy: AclPolicy | None) -> None:
        """Install (or with None remove) the ACL policy; None allows everything like the original."""
        self.acl = policy

    def set_wall_time(self, wall_now: float) -> None:
        """Wall-clock time (Unix seconds) from the daemon, for trusted-key expiry.

        The core's ``now`` is monotonic and cannot be compared with expiry dates; the daemon calls
        this before :meth:`handle_timer` (once a second is enough). Without it keys never expire.
        """
        self._wall_now = wall_now

    def shutdown(self, now: float) -> None:
        """Send CLOSE to every peer (spec 10.6)."""
        log.info("Shutting down...")
        log.debug("Broadcasting message type 255, 0 bytes to %d peers", len(self._peers))
        for addr, peer in self._peers.items():
            with contextlib.suppress(VpnCloudError):
                self._send(peer.crypto.send_message(messages.MSG_CLOSE, b""), addr)
        self._closed = True


def _is_ping(data: bytes) -> bool:
    """A handshake message whose STAGE is PING (no signature check; the caller verifies later)."""
    if data[:1] != b"\xff":
        return False
    try:
        return decode_init(data).stage == STAGE_PING
    except DecodeError:
        return False


def _fmt(addr: SocketAddr) -> str:
    return format_sockaddr(nice(addr))


def _addr_text(addr: bytes) -> str:
    from .types import address_to_str

    return address_to_str(addr)


def _algorithm_name(crypto: PeerCrypto) -> str:
    alg = crypto.algorithm
    return alg.display if alg is not None else "PLAIN"


def _peer_traffic(traffic: TrafficStats, addr: SocketAddr) -> dict[str, int] | None:
    entry = traffic.peers.get(addr)
    return entry.as_dict() if entry is not None else None


def _rotation_info(crypto: PeerCrypto) -> dict[str, Any] | None:
    info = getattr(crypto, "rotation_info", None)
    if callable(info):
        result = info()
        return result if isinstance(result, dict) else None
    return None


def _as_datagrams(data: bytes | Train) -> list[bytes]:
    return data.datagrams() if isinstance(data, Train) else [data]
