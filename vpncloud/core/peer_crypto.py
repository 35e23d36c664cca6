"""Per-peer crypto: handshake, then session core and key rotation (spec 6.8, 8.4).

A :class:`PeerCrypto` exists per peer address. It starts with a :class:`Handshake`; once that
succeeds it holds the session (a :class:`CryptoCore` plus a :class:`RotationState`, or nothing for
unencrypted sessions). The handshake instance is kept while it still has work to do: the initiator
keeps it for about 61 ticks to answer duplicate PONGs with its PENG.

Roles (spec 6.8): the handshake *responder* is the rotation *initiator* and sends ROTATION id 1
right away; that message is the ``reply`` of its :class:`Initialized` result. The handshake
initiator's ``Initialized.reply`` is its PENG.
"""

from __future__ import annotations

from dataclasses import dataclass

from .crypto_core import CryptoCore
from .errors import CryptoError, DecodeError, InitError
from .handshake import INIT_MESSAGE, AlgorithmList, Handshake, State
from .identity import Identity
from .primitives import Algorithm, Rng
from .rotation import KeyInstall, RotationMessage, RotationState

__all__ = [
    "MSG_ROTATION",
    "ROTATE_INTERVAL",
    "CryptoConfig",
    "Initialized",
    "Message",
    "Nothing",
    "PeerCrypto",
    "Reply",
]

MSG_ROTATION = 0x10
ROTATE_INTERVAL = 120


@dataclass
class CryptoConfig:
    """Crypto settings of a node: identity, local algorithm order with speeds, "plain" allowed."""

    identity: Identity
    algorithms: list[tuple[Algorithm, float]]
    plain_allowed: bool = False


@dataclass
class Message:
    """A session message for the node (anything but ROTATION)."""

    msg_type: int
    payload: bytes


@dataclass
class Reply:
    """A datagram to send back to the peer (handshake retransmission/PONG/PENG)."""

    data: bytes


@dataclass
class Initialized:
    """Handshake completed: the peer's NODE_INFO and maybe a datagram to send (PENG or ROTATION)."""

    node_info: bytes
    reply: bytes | None


@dataclass
class Nothing:
    """Nothing for the node to do."""


HandleResult = Message | Reply | Initialized | Nothing


class PeerCrypto:
    """Crypto state of one peer address (the original's ``PeerCrypto``)."""

    def __init__(self, cfg: CryptoConfig, node_id: bytes, node_info: bytes, rng: Rng) -> None:
        """Use :meth:`initiator` or :meth:`responder`."""
        self._rng = rng
        algorithms = AlgorithmList.build(cfg.algorithms, cfg.plain_allowed)
        self._handshake: Handshake | None = Handshake(cfg.identity, node_id, node_info, algorithms, rng)
        self._core: CryptoCore | None = None
        self._rotation: RotationState | None = None
        self._rotate_counter = 0
        self.is_ready = False
        self.algorithm: Algorithm | None = None
        self.peer_timeout: int | None = None  # decoded by node.py from the handshake NODE_INFO
        self.handshake_initiator: bool | None = None
        self.ticks_since_key_switch = 0
        #: sending-key switches since the session started (rotation, spec 8)
        self.key_rotations = 0
        #: The peer's trusted public key, known once the handshake succeeded (key expiry, reload).
        self.peer_public_key: bytes | None = None

    @classmethod
    def initiator(
        cls, cfg: CryptoConfig, node_id: bytes, node_info: bytes, rng: Rng
    ) -> tuple[PeerCrypto, bytes]:
        """Start a connection: returns the object and the PING datagram to send."""
        obj = cls(cfg, node_id, node_info, rng)
        algorithms = AlgorithmList.build(cfg.algorithms, cfg.plain_allowed)
        obj._handshake, ping = Handshake.initiator(cfg.identity, node_id, node_info, algorithms, rng)
        return obj, ping

    @classmethod
    def responder(cls, cfg: CryptoConfig, node_id: bytes, node_info: bytes, rng: Rng) -> PeerCrypto:
        """Instance for an incoming PING (feed it to :meth:`handle_message`)."""
        return cls(cfg, node_id, node_info, rng)

    @property
    def has_init(self) -> bool:
        """True while handshake state is kept (pending, or the initiator's ~61-tick grace period)."""
        return self._handshake is not None

    @property
    def core(self) -> CryptoCore | None:
        """The session core once established (None before, and for unencrypted sessions).

        For the bulk data path (``bulk.py``): DATA frames are encrypted/decrypted with it directly.
        """
        return self._core

    def proves_receipt(self, frame: bytes) -> bool:
        """A session frame that opens with the key of the PONG we sent (responder, PENG not yet in)."""
        return self._handshake is not None and not self.is_ready and self._handshake.opens(frame)

    @property
    def send_slot(self) -> int | None:
        """Current sending key slot (None without a core)."""
        return None if self._core is None else self._core.send_slot

    def rotation_info(self) -> dict[str, int | bool] | None:
        """Key-rotation status for ``Node.status`` (None for unencrypted or unfinished sessions)."""
        if self._core is None or self._rotation is None:
            return None
        return {
            "send_slot": self._core.send_slot,
            "ticks_since_key_switch": self.ticks_since_key_switch,
            "key_rotations": self.key_rotations,
            "ticks_to_next_cycle": ROTATE_INTERVAL - self._rotate_counter,
            "rotation_initiator": not self.handshake_initiator,
            "message_id": self._rotation.message_id,
        }

    # --- receiving -------------------------------------------------------------------------

    def handle_message(self, datagram: bytes) -> HandleResult:
        """Process one datagram from this peer.

        Raises ``CryptoError``/``InitError`` (drop, count invalid) or ``InitFatal`` (drop the
        handshake). Never anything else.
        """
        if not datagram:
            raise CryptoError("Invalid crypto state: No message in buffer")
        if datagram[0] == INIT_MESSAGE:
            # Slot ids are 0..3, so 0xFF is never a session frame; a plain CLOSE lands here too and
            # is rejected like in the original (quirk 8).
            return self._handle_init(datagram)
        if not self.is_ready:
            raise CryptoError("Invalid crypto state: session not established")
        core = self._core
        if core is None:
            # Unencrypted session: [type][payload].
            return Message(datagram[0], datagram[1:])
        plain = core.decrypt(datagram)
        if not plain:
            raise CryptoError("Empty message")
        msg_type = plain[0]
        if msg_type == MSG_ROTATION:
            self._handle_rotation(plain[1:])
            return Nothing()
        return Message(msg_type, plain[1:])

    def open_payload(self, frame: bytes | memoryview, msg_type: int) -> memoryview:
        """The payload of a session frame that must carry a message of ``msg_type`` (a reassembled
        super-packet), as a view of the plaintext: ``handle_message`` would copy 64 KB once more.

        Raises ``CryptoError`` when there is no session, the frame does not authenticate or it
        holds another message type. Such a frame is dropped whole: rotation and handshake
        messages never travel as super-packet slices, so one found there is not acted on.
        """
        if not self.is_ready or not frame or frame[0] == INIT_MESSAGE:
            raise CryptoError("Invalid crypto state: no session for a super-packet")
        core = self._core
        plain = memoryview(frame if core is None else core.decrypt(frame))
        if not plain or plain[0] != msg_type:
            raise CryptoError("Unexpected message type in a super-packet")
        return plain[1:]

    def _handle_init(self, datagram: bytes) -> HandleResult:
        hs = self._handshake
        if hs is None:
            raise InitError("No handshake in progress")
        try:
            step = hs.handle(datagram)
        finally:
            if hs.state is State.CLOSING:
                self._handshake = None
        if step.session is not None and not self.is_ready:
            session = step.session
            self.algorithm = session.algorithm
            self._core = session.core
            self.is_ready = True
            self.handshake_initiator = session.initiator
            self.peer_public_key = hs.peer_key
            reply = step.reply
            if self._core is not None:
                # The handshake responder is the rotation initiator (spec 6.8).
                self._rotation = RotationState(not session.initiator, session.algorithm, self._rng)
                first = self._rotation.initial_message()
                if first is not None:
                    reply = self._core.encrypt(bytes((MSG_ROTATION,)) + first.encode())
            return Initialized(session.peer_payload, reply)
        if step.reply is not None:
            return Reply(step.reply)
        return Nothing()

    def _handle_rotation(self, body: bytes) -> None:
        if self._rotation is None or self._core is None:
            raise CryptoError("Unexpected rotation message")
        try:
            msg = RotationMessage.decode(body)
        except DecodeError as exc:
            raise CryptoError(str(exc)) from None
        self._install(self._rotation.handle_message(msg))

    def _install(self, install: KeyInstall | None) -> None:
        if install is not None and self._core is not None:
            self._core.rotate(install.key, install.message_id, install.send)
            if install.send:
                self.ticks_since_key_switch = 0
                self.key_rotations += 1

    # --- sending ---------------------------------------------------------------------------

    def send_message(self, msg_type: int, payload: bytes) -> bytes:
        """The whole datagram for one session message (encrypted frame or ``[type][payload]``)."""
        if not self.is_ready:
            raise CryptoError("Invalid crypto state: session not established")
        data = bytes((msg_type,)) + payload
        core = self._core
        return data if core is None else core.encrypt(data)

    # --- time ------------------------------------------------------------------------------

    def every_tick(self) -> bytes | None:
        """Housekeeping: handshake retransmission, else maybe a rotation message (spec 6.7, 8.4).

        Raises ``InitFatal`` when the handshake times out.
        """
        out: bytes | None = None
        hs = self._handshake
        if hs is not None:
            try:
                out = hs.every_tick()
            finally:
                if hs.state is State.CLOSING:
                    self._handshake = None
        core = self._core
        if core is None:
            return out
        core.every_tick()
        self.ticks_since_key_switch += 1
        if out is not None:
            return out  # the rotation counter does not advance on retransmission ticks
        assert self._rotation is not None
        self._rotate_counter += 1
        if self._rotate_counter < ROTATE_INTERVAL:
            return None
        self._rotate_counter = 0
        msg, install = self._rotation.cycle()
        self._install(install)
        if msg is None:
            return None
        return core.encrypt(bytes((MSG_ROTATION,)) + msg.encode())
