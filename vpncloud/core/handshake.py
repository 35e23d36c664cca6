"""The PING/PONG/PENG handshake (spec section 6): message codec and state machine.

Theory of operation
-------------------
One :class:`Handshake` instance exists per peer address and attempt. The initiator (A) sends PING
(its ephemeral X25519 key and algorithm list), the responder (B) answers PONG (its key, its list and
its NODE_INFO encrypted with the new session key), A answers PENG (its NODE_INFO). Both sides then
hold a :class:`~vpncloud.core.crypto_core.CryptoCore` keyed with the raw X25519 secret (no KDF).

Every received message goes through the same fixed pipeline (the original's check order):

1. *untrusted*: the salt/key-hash must select a trusted key (``CryptoError``), before any parsing;
2. *parse*: fields bounded by the datagram (``InitError``);
3. *signature* over bytes ``1..END`` inclusive (``CryptoError``);
4. *required fields* and stage in {1, 2, 3} (``InitError``);
5. *self check*: the message carries our own salted node-id hash -> ``InitFatal`` "Connected to self";
6. the action from :data:`TRANSITIONS`, keyed by ``(our state, received stage)``.

All state changes happen in the action methods named by that table; nothing else moves the state
except :meth:`Handshake.every_tick` (retransmission every tick, give-up after 120 ticks, and the
61-tick grace period in which an initiator still answers a duplicate PONG with its PENG).

Errors: ``CryptoError``/``InitError`` only drop the datagram; ``InitFatal`` means the instance is
dead (the caller discards it). "No reply" is represented by ``reply=None``; unlike the original we
never emit zero-length datagrams (spec 4.5).
"""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from .crypto_core import CryptoCore
from .errors import CryptoError, DecodeError, InitError, InitFatal, SignatureError
from .identity import Identity
from .primitives import Algorithm, Rng, X25519Key, ed25519_verify, sha256

__all__ = [
    "INIT_MESSAGE",
    "MAX_RETRIES",
    "STAGE_PENG",
    "STAGE_PING",
    "STAGE_PONG",
    "TRANSITIONS",
    "WAIT_TICKS",
    "Action",
    "AlgorithmList",
    "Handshake",
    "HandshakeStep",
    "InitMessage",
    "Session",
    "State",
    "decode_init",
    "encode_init",
    "parse_init",
    "ping_ephemeral_key",
    "salted_node_id_hash",
    "select_algorithm",
]

INIT_MESSAGE = 0xFF
STAGE_PING = 1
STAGE_PONG = 2
STAGE_PENG = 3
MAX_RETRIES = 120
WAIT_TICKS = 60

FIELD_END = 0
FIELD_STAGE = 1
FIELD_SALTED_NODE_ID_HASH = 2
FIELD_ECDH_PUBLIC_KEY = 3
FIELD_ALGORITHMS = 4
FIELD_PAYLOAD = 5

_F32_INF = b"\x7f\x80\x00\x00"


class State(enum.IntEnum):
    """Handshake states; the first three equal the stage they expect."""

    EXPECT_PING = 1
    EXPECT_PONG = 2
    EXPECT_PENG = 3
    WAITING_TO_CLOSE = 4
    CLOSING = 5


def salted_node_id_hash(salt: bytes, node_id: bytes) -> bytes:
    """``salt(4) || SHA-256(salt || node_id)[:16]`` (spec 6.2)."""
    return salt + sha256(salt + node_id)[:16]


def _f32(value: float) -> float:
    """Round to the f32 the wire carries, so local and peer speeds compare like the original."""
    return float(struct.unpack(">f", struct.pack(">f", value))[0])


@dataclass(frozen=True, slots=True)
class AlgorithmList:
    """The ALGORITHMS field: "unencrypted allowed" flag + ``(algorithm, speed MB/s)`` in order."""

    plain_allowed: bool
    algorithms: tuple[tuple[Algorithm, float], ...]

    @classmethod
    def build(cls, algorithms: Iterable[tuple[Algorithm, float]], plain_allowed: bool) -> AlgorithmList:
        """From a config list; PLAIN entries in ``algorithms`` also count as "plain allowed"."""
        algs: list[tuple[Algorithm, float]] = []
        for alg, speed in algorithms:
            if alg is Algorithm.PLAIN:
                plain_allowed = True
            else:
                algs.append((Algorithm(alg), _f32(speed)))
        return cls(plain_allowed, tuple(algs))

    def encode(self) -> bytes:
        """``[id][f32 BE speed]`` entries; "unencrypted" first with speed +inf."""
        out = bytearray()
        if self.plain_allowed:
            out += b"\x00" + _F32_INF
        for alg, speed in self.algorithms:
            out += struct.pack(">Bf", int(alg), speed)
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> AlgorithmList:
        """``len // 5`` entries are read; unknown ids are ignored (spec 6.3)."""
        plain = False
        algs: list[tuple[Algorithm, float]] = []
        for i in range(len(data) // 5):
            alg_id, speed = struct.unpack_from(">Bf", data, i * 5)
            if alg_id == 0:
                plain = True
            elif alg_id in (1, 2, 3):
                algs.append((Algorithm(alg_id), float(speed)))
        return cls(plain, tuple(algs))


def select_algorithm(local: AlgorithmList, peer: AlgorithmList) -> Algorithm:
    """Spec 6.5: plain if both allow it, else the highest ``min(local, peer)`` speed; ties -> local order.

    Raises ``InitFatal`` "No common algorithms".
    """
    if local.plain_allowed and peer.plain_allowed:
        return Algorithm.PLAIN
    peer_speeds: dict[Algorithm, float] = {}
    for alg, speed in peer.algorithms:
        peer_speeds.setdefault(alg, speed)
    best: Algorithm | None = None
    best_speed = -math.inf
    for alg, speed in local.algorithms:
        if alg in peer_speeds:
            value = min(speed, peer_speeds[alg])
            if best is None or value > best_speed:
                best, best_speed = alg, value
    if best is None:
        raise InitFatal("No common algorithms")
    return best


@dataclass(slots=True)
class InitMessage:
    """A parsed handshake message. ``fields`` lists ``(type, offset of type byte, length)``."""

    salt: bytes
    key_hash: bytes
    stage: int | None = None
    salted_node_id_hash: bytes | None = None
    ecdh_public_key: bytes | None = None
    algorithms: AlgorithmList | None = None
    payload: bytes | None = None
    end_offset: int = 0
    signature: bytes = b""
    signed_data: bytes = b""
    fields: list[tuple[int, int, int]] = field(default_factory=list)


def decode_init(data: bytes) -> InitMessage:
    """Parse a handshake datagram (starting with 0xFF) without checking the signature.

    The parse is bounded by ``len(data)``; bytes after the signature are ignored. Raises only
    ``DecodeError``.
    """
    n = len(data)
    if n < 10 or data[0] != INIT_MESSAGE:
        raise DecodeError("Init message too short")
    msg = InitMessage(salt=bytes(data[1:5]), key_hash=bytes(data[5:9]))
    pos = 9
    while True:
        if pos >= n:
            raise DecodeError("Init message too short")
        ftype = data[pos]
        if ftype == FIELD_END:
            break
        if pos + 3 > n:
            raise DecodeError("Init message too short")
        flen = (data[pos + 1] << 8) | data[pos + 2]
        start = pos + 3
        end = start + flen
        if end > n:
            raise DecodeError("Init message too short")
        value = bytes(data[start:end])
        msg.fields.append((ftype, pos, flen))
        # Later duplicates overwrite earlier ones, unknown types are skipped (spec 6.3).
        if ftype == FIELD_STAGE:
            if flen != 1:
                raise DecodeError("Invalid stage length")
            msg.stage = value[0]
        elif ftype == FIELD_SALTED_NODE_ID_HASH:
            if flen != 20:
                raise DecodeError("Invalid salted node id hash length")
            msg.salted_node_id_hash = value
        elif ftype == FIELD_ECDH_PUBLIC_KEY:
            msg.ecdh_public_key = value
        elif ftype == FIELD_ALGORITHMS:
            msg.algorithms = AlgorithmList.decode(value)
        elif ftype == FIELD_PAYLOAD:
            msg.payload = value
        pos = end
    msg.end_offset = pos
    if pos + 1 >= n:
        raise DecodeError("Init message too short: no signature")
    sig_len = data[pos + 1]
    sig_end = pos + 2 + sig_len
    if sig_end > n:
        raise DecodeError("Init message too short: truncated signature")
    msg.signature = bytes(data[pos + 2 : sig_end])
    msg.signed_data = bytes(data[1 : pos + 1])
    return msg


def ping_ephemeral_key(data: bytes) -> bytes | None:
    """The ECDH key of a handshake datagram that :func:`decode_init` would decode as a PING carrying one;
    None for anything else. The same bounds as ``decode_init`` without building the message: the flood
    guard asks this of every handshake datagram that reaches its replay table."""
    n = len(data)
    if n < 10 or data[0] != INIT_MESSAGE:
        return None
    pos = 9
    stage = key = None
    while True:
        if pos >= n:
            return None
        ftype = data[pos]
        if ftype == FIELD_END:
            break
        if pos + 3 > n:
            return None
        start = pos + 3
        end = start + ((data[pos + 1] << 8) | data[pos + 2])
        if end > n:
            return None
        if ftype == FIELD_STAGE:
            if end - start != 1:
                return None
            stage = data[start]
        elif ftype == FIELD_SALTED_NODE_ID_HASH:
            if end - start != 20:
                return None
        elif ftype == FIELD_ECDH_PUBLIC_KEY:
            key = data[start:end]
        pos = end
    if stage != STAGE_PING or key is None or pos + 1 >= n or pos + 2 + data[pos + 1] > n:
        return None
    return bytes(key)


def parse_init(data: bytes, identity: Identity) -> tuple[InitMessage, bytes]:
    """Decode and verify a handshake message in the original's check order (spec 6.3).

    Returns the message and the trusted public key that signed it. Raises ``CryptoError``
    ("untrusted peer", "invalid signature") or ``InitError`` (malformed, missing fields, bad stage).
    """
    if len(data) < 9 or data[0] != INIT_MESSAGE:
        # The original reads stale buffer bytes here and reports "untrusted peer" (quirk 20).
        raise CryptoError("untrusted peer")
    public_key = identity.find_trusted(bytes(data[1:5]), bytes(data[5:9]))
    if public_key is None:
        raise CryptoError("untrusted peer")
    try:
        msg = decode_init(data)
    except DecodeError as exc:
        raise InitError(str(exc)) from None
    if len(msg.signature) != 64 or not ed25519_verify(public_key, msg.signature, msg.signed_data):
        raise SignatureError("invalid signature")
    if msg.stage is None or msg.salted_node_id_hash is None:
        raise InitError("Missing stage or salted node id hash")
    if msg.stage == STAGE_PING:
        if msg.ecdh_public_key is None or msg.algorithms is None:
            raise InitError("PING without ECDH key or algorithms")
    elif msg.stage == STAGE_PONG:
        if msg.ecdh_public_key is None or msg.algorithms is None or msg.payload is None:
            raise InitError("PONG without ECDH key, algorithms or payload")
    elif msg.stage == STAGE_PENG:
        if msg.payload is None:
            raise InitError("PENG without payload")
    else:
        raise InitError("Invalid stage")
    return msg, public_key


def _field(ftype: int, value: bytes) -> bytes:
    return struct.pack(">BH", ftype, len(value)) + value


def encode_init(
    identity: Identity,
    salt: bytes,
    stage: int,
    salted_hash: bytes,
    *,
    ecdh_public_key: bytes | None = None,
    algorithms: AlgorithmList | None = None,
    payload: bytes | None = None,
) -> bytes:
    """Build and sign a handshake message; fields in the original's order 1, 2, 3, 4, 5."""
    body = bytearray(salt)
    body += identity.key_hash(salt)
    body += _field(FIELD_STAGE, bytes((stage,)))
    body += _field(FIELD_SALTED_NODE_ID_HASH, salted_hash)
    if ecdh_public_key is not None:
        body += _field(FIELD_ECDH_PUBLIC_KEY, ecdh_public_key)
    if algorithms is not None:
        body += _field(FIELD_ALGORITHMS, algorithms.encode())
    if payload is not None:
        body += _field(FIELD_PAYLOAD, payload)
    body.append(FIELD_END)
    signature = identity.sign(bytes(body))
    return b"\xff" + bytes(body) + bytes((len(signature),)) + signature


@dataclass(slots=True)
class Session:
    """A completed handshake: ``core`` is None for unencrypted sessions."""

    algorithm: Algorithm
    core: CryptoCore | None
    peer_payload: bytes
    initiator: bool


@dataclass(slots=True)
class HandshakeStep:
    """Outcome of one received message: a datagram to send and/or a finished session."""

    reply: bytes | None = None
    session: Session | None = None


class Action(enum.Enum):
    """What to do with a (state, received stage) pair; see :data:`TRANSITIONS`."""

    RESPOND_PING = "respond to PING with PONG -> EXPECT_PENG"
    FINISH_INITIATOR = "accept PONG, send PENG -> WAITING_TO_CLOSE (success as initiator)"
    FINISH_RESPONDER = "accept PENG -> CLOSING (success as responder)"
    TIE_BREAK = "concurrent PING: higher salted hash stays initiator"
    RETRANSMIT_OR_FATAL = "resend the last message verbatim; fatal if none was sent yet"
    IGNORE = "drop silently"


_S = State
#: The whole state machine (spec 6.4). Key: (current state, stage of the received message).
TRANSITIONS: dict[tuple[State, int], Action] = {
    (_S.EXPECT_PING, STAGE_PING): Action.RESPOND_PING,
    (_S.EXPECT_PING, STAGE_PONG): Action.RETRANSMIT_OR_FATAL,
    (_S.EXPECT_PING, STAGE_PENG): Action.RETRANSMIT_OR_FATAL,
    (_S.EXPECT_PONG, STAGE_PING): Action.TIE_BREAK,
    (_S.EXPECT_PONG, STAGE_PONG): Action.FINISH_INITIATOR,
    (_S.EXPECT_PONG, STAGE_PENG): Action.RETRANSMIT_OR_FATAL,
    (_S.EXPECT_PENG, STAGE_PING): Action.RETRANSMIT_OR_FATAL,
    (_S.EXPECT_PENG, STAGE_PONG): Action.RETRANSMIT_OR_FATAL,
    (_S.EXPECT_PENG, STAGE_PENG): Action.FINISH_RESPONDER,
    (_S.WAITING_TO_CLOSE, STAGE_PING): Action.RETRANSMIT_OR_FATAL,
    (_S.WAITING_TO_CLOSE, STAGE_PONG): Action.RETRANSMIT_OR_FATAL,
    (_S.WAITING_TO_CLOSE, STAGE_PENG): Action.RETRANSMIT_OR_FATAL,
    (_S.CLOSING, STAGE_PING): Action.IGNORE,
    (_S.CLOSING, STAGE_PONG): Action.IGNORE,
    (_S.CLOSING, STAGE_PENG): Action.IGNORE,
}


class Handshake:
    """One handshake instance (the original's ``InitState``)."""

    def __init__(
        self,
        identity: Identity,
        node_id: bytes,
        node_info: bytes,
        algorithms: AlgorithmList,
        rng: Rng,
    ) -> None:
        self._identity = identity
        self._node_info = node_info  # fixed at creation, not refreshed on retransmission (6.6)
        self._algorithms = algorithms
        self._rng = rng
        self.salted_hash = salted_node_id_hash(rng.randbytes(4), node_id)
        self.state = State.EXPECT_PING
        self.retries = 0
        self.countdown = WAIT_TICKS
        self.last_message: bytes | None = None
        self._ecdh: X25519Key | None = None
        self._core: CryptoCore | None = None
        self.algorithm: Algorithm | None = None
        #: The trusted public key that signed the last accepted message (for key expiry checks).
        self.peer_key: bytes | None = None

    @classmethod
    def initiator(
        cls, identity: Identity, node_id: bytes, node_info: bytes, algorithms: AlgorithmList, rng: Rng
    ) -> tuple[Handshake, bytes]:
        """New instance that has sent PING; returns it with the PING datagram."""
        hs = cls(identity, node_id, node_info, algorithms, rng)
        hs._ecdh = X25519Key.generate(rng)
        ping = hs._send(STAGE_PING, ecdh_public_key=hs._ecdh.public, algorithms=algorithms)
        hs.state = State.EXPECT_PONG
        return hs, ping

    def _send(
        self,
        stage: int,
        *,
        ecdh_public_key: bytes | None = None,
        algorithms: AlgorithmList | None = None,
        payload: bytes | None = None,
    ) -> bytes:
        # A fresh key-hash salt per message written (spec 5.3); retransmissions reuse the bytes.
        msg = encode_init(
            self._identity,
            self._rng.randbytes(4),
            stage,
            self.salted_hash,
            ecdh_public_key=ecdh_public_key,
            algorithms=algorithms,
            payload=payload,
        )
        self.last_message = msg
        return msg

    # --- receiving -------------------------------------------------------------------------

    def handle(self, data: bytes) -> HandshakeStep:
        """Process one received handshake datagram (see the module docstring)."""
        msg, key = parse_init(data, self._identity)
        assert msg.stage is not None and msg.salted_node_id_hash is not None  # checked by parse_init
        if msg.salted_node_id_hash == self.salted_hash:
            raise InitFatal("Connected to self")
        self.peer_key = key
        action = TRANSITIONS[(self.state, msg.stage)]
        if action is Action.IGNORE:
            return HandshakeStep()
        if action is Action.RETRANSMIT_OR_FATAL:
            if self.last_message is None:
                raise InitFatal("Received invalid stage as first message")
            return HandshakeStep(reply=self.last_message)
        if action is Action.TIE_BREAK:
            if msg.salted_node_id_hash <= self.salted_hash:
                return HandshakeStep()  # we stay initiator; the peer will answer our PING
            # The peer has the higher hash and stays initiator: become its responder.
            self.state = State.EXPECT_PING
            self._ecdh = None
            self.last_message = None
            action = Action.RESPOND_PING
        self.retries = 0
        if action is Action.RESPOND_PING:
            return self._respond_ping(msg)
        if action is Action.FINISH_INITIATOR:
            return self._finish_initiator(msg)
        return self._finish_responder(msg)

    def _make_core(self, alg: Algorithm, peer_public: bytes, peer_hash: bytes) -> CryptoCore | None:
        if alg is Algorithm.PLAIN:
            return None
        assert self._ecdh is not None
        try:
            key = self._ecdh.exchange(peer_public)[: alg.key_len]
        except CryptoError as exc:
            # The original panics on bad X25519 input (quirk 7); we abort the handshake.
            raise InitFatal(str(exc)) from None
        return CryptoCore(alg, key, self.salted_hash > peer_hash, self._rng)

    def _open_payload(self, payload: bytes) -> bytes:
        if self._core is None:
            return payload
        try:
            return self._core.decrypt(payload)
        except CryptoError:
            raise InitFatal("Failed to decrypt payload") from None

    def _seal_payload(self) -> bytes:
        return self._node_info if self._core is None else self._core.encrypt(self._node_info)

    def _respond_ping(self, msg: InitMessage) -> HandshakeStep:
        assert msg.algorithms is not None and msg.ecdh_public_key is not None
        assert msg.salted_node_id_hash is not None
        self._ecdh = X25519Key.generate(self._rng)
        alg = select_algorithm(self._algorithms, msg.algorithms)
        self._core = self._make_core(alg, msg.ecdh_public_key, msg.salted_node_id_hash)
        self.algorithm = alg
        pong = self._send(
            STAGE_PONG,
            ecdh_public_key=self._ecdh.public,
            algorithms=self._algorithms,
            payload=self._seal_payload(),
        )
        self.state = State.EXPECT_PENG
        return HandshakeStep(reply=pong)

    def _finish_initiator(self, msg: InitMessage) -> HandshakeStep:
        assert msg.algorithms is not None and msg.ecdh_public_key is not None
        assert msg.salted_node_id_hash is not None and msg.payload is not None
        alg = select_algorithm(self._algorithms, msg.algorithms)
        self._core = self._make_core(alg, msg.ecdh_public_key, msg.salted_node_id_hash)
        self.algorithm = alg
        peer_info = self._open_payload(msg.payload)
        peng = self._send(STAGE_PENG, payload=self._seal_payload())
        self.state = State.WAITING_TO_CLOSE
        self.countdown = WAIT_TICKS
        return HandshakeStep(reply=peng, session=Session(alg, self._core, peer_info, True))

    def _finish_responder(self, msg: InitMessage) -> HandshakeStep:
        assert msg.payload is not None and self.algorithm is not None
        peer_info = self._open_payload(msg.payload)
        self.state = State.CLOSING
        return HandshakeStep(session=Session(self.algorithm, self._core, peer_info, False))

    def opens(self, frame: bytes) -> bool:
        """Whether a session frame decrypts with the key our PONG offered (so its sender got the PONG).

        Only meaningful for a responder waiting for the PENG: proof that the address receives.
        """
        if self.state is not State.EXPECT_PENG or self._core is None:
            return False
        try:
            self._core.decrypt(frame)
        except CryptoError:
            return False
        return True

    # --- time ------------------------------------------------------------------------------

    def every_tick(self) -> bytes | None:
        """Retransmission/give-up per tick (spec 6.7); raises ``InitFatal`` on timeout."""
        if self.state is State.WAITING_TO_CLOSE:
            if self.countdown == 0:
                self.state = State.CLOSING
            else:
                self.countdown -= 1
            return None
        if self.state is State.CLOSING:
            return None
        if self.retries < MAX_RETRIES:
            self.retries += 1
            return self.last_message
        self.state = State.CLOSING
        raise InitFatal("Initialization timeout")
