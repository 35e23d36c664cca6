"""The daemon: startup sequence (spec 14.5), event loop (spec 2.1) and the reactions to node events.

The loop waits on the UDP socket, the device, the control socket and a wake-up pipe (signals and
results of helper threads) with ``selectors``. Unlike the original (one read per wake-up) it drains
every ready fd until EAGAIN in bounded batches and flushes the node's output after each batch, which
does not change anything on the wire. Housekeeping runs when ``node.get_timer()`` is due.

Threads (hooks, beacon commands, DNS) never touch the node: they put callables on a queue and write a
byte to the wake-up pipe; the loop runs the callables on its own thread.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import queue
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vpncloud import fastpath
from vpncloud.config import (
    VERSION_TEXT,
    Config,
    ConfigError,
    build_crypto_config,
    build_identity,
    build_node_config,
    parse_ip,
    parse_listen_addr,
    parse_metrics_listen,
)
from vpncloud.core import base62
from vpncloud.core.types import SocketAddr, format_sockaddr, mapped, nice
from vpncloud.fastpath import offload
from vpncloud.fastpath.rows import PacketRows, Train
from vpncloud.fastpath.superpacket import SuperPacketView
from vpncloud.lazy import TWIN_MODULES, loaded_optional

from . import device as devmod
from . import heap
from .control import ControlServer, default_socket_path
from .hooks import Hooks, run_sync
from .logs import get_logger
from .privileges import PrivilegeError, daemonize, drop_privileges, lookup, sd_notify
from .security_file import Security, apply_security, load_security_file
from .security_file import default_path as security_default_path
from .stats_io import (
    StatsFile,
    beacon_addresses,
    load_beacon,
    remove_beacon_file,
    send_statsd,
    store_beacon,
)
from .udp import UdpSocket, primary_addresses, resolve

if TYPE_CHECKING:
    from vpncloud.core.node import Node

log = get_logger()

EXIT_OK = 0
EXIT_FATAL = 255
DEVICE_BATCH = 256
DEFAULT_PEER_PORT = 3210
#: Offload mode: flush the node's output after this many bytes read from the device, so a burst of
#: super-packets does not overflow the socket's send buffer before the first send.
DEVICE_FLUSH_BYTES = 256 * 1024
#: Offload mode: GRO reads (each up to 64 KB) per wake-up of the socket before flushing.
SOCKET_TRAIN_BATCH = 32
#: Reads per wake-up of the listening socket while peer sockets had data in the same wake-up: with
#: peer sockets (issue 24) it only carries handshakes and unknown sources, and under a flood it is
#: always ready; a small batch keeps the loop coming back to the peers (the kernel drops the rest).
LISTEN_BATCH_BUSY = 32
#: Peers beyond this many share the listening socket (file descriptors are limited, often to 1024).
MAX_PEER_SOCKETS = 512

#: Data-plane modes (environment ``VPNCLOUD_DATAPLANE``): ``off`` = one packet per syscall as the
#: original; ``socket`` = one packet per device read/write, but UDP GSO sends and GRO receives on the
#: socket (what a TAP device or a kernel without TUN offloads gets in the modes below); ``wire`` =
#: device and socket offloads, only ordinary VpnCloud messages on the wire (T1); ``super``
#: (default) = ``wire`` plus super-packets to peers that announce them (T2).
DATAPLANE_MODES = ("off", "socket", "wire", "super")


def dataplane_mode() -> str:
    """The configured data-plane mode (unknown values fall back to the default with a warning)."""
    mode = os.environ.get("VPNCLOUD_DATAPLANE", "super").strip().lower() or "super"
    if mode not in DATAPLANE_MODES:
        log.warning(
            "Unknown VPNCLOUD_DATAPLANE=%r (choose from off, socket, wire, super); using 'super'", mode
        )
        mode = "super"
    return mode


def gso_max_size_for(mtu: int, l2: int = 0) -> int:
    """Largest super-packet whose datagrams fit one UDP GSO send (<= 64 datagrams, 65,000 bytes).

    Each segment becomes one datagram of at most ``mtu + l2 + 25`` bytes (Ethernet header on TAP,
    crypto header, tag, type) and carries at least ``mtu - 60`` payload bytes (IPv6 + TCP
    timestamps); super-packet slices add 7.
    """
    per_send = max(1, min(64, 65000 // (mtu + l2 + 32)))
    return max(per_send * max(mtu - 60, 500), 1280)


class Fatal(Exception):
    """A startup error that ends the process with status 255 after one ERROR line."""


def normalize_peer(name: str) -> str:
    """Append ``:3210`` when there is no port (no ``:`` outside ``[...]``) (spec 10.4)."""
    text = name.strip()
    if text.startswith("["):
        return text if "]:" in text else f"{text}:{DEFAULT_PEER_PORT}"
    if ":" in text:
        # a bare IPv6 address has several colons and no port
        return text if text.count(":") == 1 else f"[{text}]:{DEFAULT_PEER_PORT}"
    return f"{text}:{DEFAULT_PEER_PORT}"


class Daemon:
    """One running node with its device, socket and helpers."""

    def __init__(self, config: Config, reload: Callable[[], Config] | None = None) -> None:
        self.config = config
        self.reload = reload
        # a UdpSocket, or the proxy client with the same interface (vpncloud.daemon.proxy_client)
        self.sock: Any = None
        self.device: devmod.Device | None = None
        self.node: Any = None
        self.control: ControlServer | None = None
        self.metrics: Any = None  # vpncloud.daemon.metrics.MetricsServer with --metrics-listen
        self.routes: devmod.RouteManager | None = None
        self.stats_file: StatsFile | None = None
        self.security = Security()
        self.portmap: Any = None  # vpncloud.daemon.portmap.PortMapper while port forwarding runs
        self.portmap_addrs: list[SocketAddr] = []
        self.hooks = Hooks(config.hook, config.hooks)
        self.sel = selectors.DefaultSelector()
        self.tasks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.stop_requested = False
        self.reload_requested = False
        self.exit_code = EXIT_OK
        self.speeds: dict[Any, float] | None = None
        self.auto_claim_ip: str | None = None
        self.started = time.monotonic()
        self.mode = dataplane_mode()
        self.vnet = False  # device reads/writes carry virtio headers (offloads on)
        # reads of super-packets and coalesced writes: whether the device offloads are in use
        self.gso_reads = 0
        self.gso_writes = 0
        self.sock_gro = False
        #: connected sockets of established peers (issue 24), see ``_sync_peer_sockets``
        self.peer_socks: dict[SocketAddr, Any] = {}
        self.peer_socket_reads = 0  # datagrams read from peer sockets that have been closed since
        wanted = os.environ.get("VPNCLOUD_PEER_SOCKETS", "1").strip() not in ("0", "off", "no")
        self.peer_sockets_on = wanted and _kernel_at_least(5, 7)
        self._peers_busy = False
        self._peers_changed = False
        self._peer_sock_failed: set[SocketAddr] = set()

    # --- helpers -----------------------------------------------------------------------------------

    def now(self) -> float:
        """The node's clock: monotonic seconds (also the beacon hour stamp, spec 15.6)."""
        return time.monotonic()

    def post(self, task: Callable[[], None]) -> None:
        """Run ``task`` on the loop thread soon (safe from any thread)."""
        self.tasks.put(task)
        if self._wake_w >= 0:
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._wake_w, b"\0")

    def _env(self, **extra: str) -> dict[str, str]:
        env = {"IFNAME": self.device.ifname if self.device else ""}
        env.update(extra)
        return env

    # --- startup (spec 14.5) -----------------------------------------------------------------------

    def setup(self) -> None:
        """Everything up to the loop; raises Fatal or ConfigError."""
        cfg = self.config
        cfg.validate()
        # Our improvement over quirk 23: keys are checked before any device exists.
        identity = build_identity(cfg)
        if cfg.user is not None or cfg.group is not None:
            try:
                lookup(cfg.user, cfg.group)  # unknown names fail now, not after the device exists
            except PrivilegeError as exc:
                raise Fatal(str(exc)) from None
        if cfg.listen.strip().startswith("ws://"):
            self._open_proxy(cfg.listen.strip())
        else:
            listen = parse_listen_addr(cfg.listen)
            try:
                self.sock = UdpSocket(listen)
            except OSError as exc:
                raise Fatal(
                    f"Failed to open socket {format_sockaddr(listen)}: {exc.strerror or exc}"
                ) from None
            log.info("Listening on %s", format_sockaddr(nice(self.sock.sock.getsockname()[:2])))
        log.info("Data-plane kernels: %s (%s)", fastpath.KERNELS, fastpath.KERNELS_REASON)
        self._setup_device()
        self._setup_offloads()
        if cfg.stats_file:
            try:
                self.stats_file = StatsFile(cfg.stats_file)
            except OSError as exc:
                raise Fatal(f"Failed to create stats file {cfg.stats_file}: {exc.strerror}") from None
            if cfg.user is not None or cfg.group is not None:
                # the file is rewritten after the privilege drop, so it must belong to the new user
                uid, gid, _ = lookup(cfg.user, cfg.group)
                with contextlib.suppress(OSError):
                    os.chown(cfg.stats_file, -1 if uid is None else uid, -1 if gid is None else gid)
        from vpncloud.core.node import Node

        crypto = build_crypto_config(cfg, identity=identity)
        self.speeds = {alg: speed for alg, speed in crypto.algorithms}
        if crypto.algorithms:
            log.info(
                "Crypto speeds: %s",
                ", ".join(f"{alg.display}: {speed:.1f} MiB/s" for alg, speed in crypto.algorithms),
            )
        node_config = build_node_config(cfg, port=self.sock.port, auto_claim_ip=self.auto_claim_ip)
        self.node = Node(node_config, crypto, self.now(), _Rng())
        try:
            self._apply_security(self._read_security())
        except ConfigError as exc:
            raise Fatal(str(exc)) from None
        self._lower_mtu_for_relays()
        self._enable_super_packets()
        self._set_own_addresses()
        self._start_port_forwarding()
        self._open_control()
        self._open_metrics()
        if self.routes is None and self._routing_wanted():
            own = []
            if cfg.ip:
                addr, plen = parse_ip(cfg.ip)
                own.append(str(ipaddress.ip_network(f"{addr}/{plen}", strict=False)))
            self.routes = devmod.RouteManager(self.device.ifname if self.device else "", own)
        for name in cfg.peers:
            self._add_configured_peer(name)
        self._flush()
        keep_net_admin = self.routes is not None
        if cfg.daemonize:
            daemonize(cfg.pid_file, cfg.user, cfg.group, keep_net_admin)
        elif cfg.user is not None or cfg.group is not None:
            try:
                drop_privileges(cfg.user, cfg.group, keep_net_admin)
            except PrivilegeError as exc:
                raise Fatal(str(exc)) from None

    def _open_proxy(self, url: str) -> None:
        """``listen: ws://...``: the proxy client replaces the UDP socket (spec 16.3)."""
        try:
            from .proxy_client import ProxyClientSocket
        except ImportError:
            raise Fatal("WebSocket proxy support is not available in this installation") from None
        try:
            self.sock = ProxyClientSocket(url)
        except OSError as exc:
            raise Fatal(f"Failed to open socket {url}: {exc.strerror or exc}") from None
        own = self.sock.own_address
        log.info("Connected to WebSocket proxy %s as %s", url, format_sockaddr(nice(own)))

    def _routing_wanted(self) -> bool:
        cfg = self.config
        return cfg.routes and cfg.device_type == "tun" and cfg.mode in ("normal", "router")

    def _setup_device(self) -> None:
        cfg = self.config
        try:
            dev = devmod.Device.open(
                cfg.device_type, cfg.device_name, cfg.device_path, offload=self.mode in ("wire", "super")
            )
        except devmod.DeviceError as exc:
            raise Fatal(str(exc)) from None
        self.device = dev
        log.info("Opened %s device %s", cfg.device_type, dev.ifname)
        self.hooks.fire("device_setup", self._env())
        devmod.setup_mtu(dev)
        try:
            if cfg.ip:
                addr, plen = parse_ip(cfg.ip)
                dev.set_ip(addr, plen)
                log.info("Configured %s with %s/%d", dev.ifname, addr, plen)
            else:
                dev.up()
        except OSError as exc:  # NetlinkError: the kernel refused the address or the link state
            raise Fatal(f"Failed to configure device {dev.ifname}: {exc}") from None
        if cfg.ifup:
            run_sync(cfg.ifup, self._env(), "ifup command")
        if cfg.fix_rp_filter:
            try:
                devmod.fix_rp_filter(dev.ifname)
            except OSError as exc:
                raise Fatal(f"Failed to fix rp_filter: {exc.strerror}") from None
        devmod.check_rp_filter(dev.ifname)
        if cfg.auto_claim and cfg.device_type == "tun":
            try:
                self.auto_claim_ip = dev.get_ipv4()
            except Exception as exc:  # only the auto-claim is lost
                log.warning("Failed to read the address of %s: %s", dev.ifname, exc)
        self.hooks.fire("device_configured", self._env())

    def _setup_offloads(self) -> None:
        """Socket buffers, UDP GSO/GRO and the device's super-packet size (offload modes only)."""
        sock = self.sock
        if hasattr(sock, "set_buffers"):
            sock.set_buffers()
        dev = self.device
        if self.mode != "off":
            heap.keep_freed_memory()
            if hasattr(sock, "enable_offloads"):
                # independent of the device: a TAP device (switch mode) still gets batched socket I/O
                sock.enable_offloads()
                self.sock_gro = bool(sock.gro)
        if dev is None or not dev.vnet:
            if self.mode != "off":
                log.info(
                    "Data plane: one packet per device read/write (no device offloads), UDP GSO %s, GRO %s",
                    "on" if getattr(sock, "gso", False) else "off",
                    "on" if self.sock_gro else "off",
                )
            return
        self.vnet = True
        try:
            # a TAP frame: Ethernet header with up to one VLAN tag
            size = gso_max_size_for(dev.get_mtu(), 18 if dev.device_type == "tap" else 0)
            dev.set_gso_max_size(size)
        except OSError as exc:  # an old kernel: bigger super-packets just take 2 sends
            log.debug("Cannot set gso_max_size on %s: %s", dev.ifname, exc)
            size = 0
        log.info(
            "Data plane: %s, device offloads 0x%x, UDP GSO %s, GRO %s, gso_max_size %d",
            self.mode,
            dev.offloads,
            "on" if getattr(sock, "gso", False) else "off",
            "on" if self.sock_gro else "off",
            size,
        )

    def _lower_mtu_for_relays(self) -> None:
        """A relayed datagram carries the relay session's overhead too (issue 22): make room for it,
        or full-size packets to relayed peers would exceed the uplink MTU."""
        from vpncloud.core.relay import RELAY_OVERHEAD

        dev = self.device
        if dev is None or self.node is None or self.node.relay is None or not self.node.relay.config.use:
            return
        try:
            mtu = dev.get_mtu() - RELAY_OVERHEAD
            dev.set_mtu(mtu)
        except OSError as exc:  # as setup_mtu: only logged
            log.error("Failed to lower the MTU for relayed peers: %s", exc)
            return
        log.info("Relays in use: MTU %d on device %s", mtu, dev.ifname)

    def _enable_super_packets(self) -> None:
        """T2: announce super-packets to peers of ours (mode ``super`` with TUN offloads)."""
        dev = self.device
        if self.mode != "super" or not self.vnet or dev is None or self.node is None:
            return
        if dev.device_type != "tun":
            # super-packets are routed by IP address; a switch learns MAC addresses per frame
            log.info("Super-packets are for TUN devices; this TAP device sends ordinary frames")
            return
        from vpncloud.fastpath.superpacket import FEATURE_TCP, FEATURE_UDP

        features = FEATURE_TCP | (FEATURE_UDP if dev.offloads & devmod.TUN_F_USO4 else 0)
        try:
            mtu = dev.get_mtu()
        except (OSError, ValueError):
            return
        # slices are no bigger than the largest ordinary datagram (MTU + type + crypto header + tag)
        self.node.enable_super_packets(features, mtu + 25)
        log.info("Super-packets announced to peers (features 0x%x)", features)

    def _open_control(self) -> None:
        path = self.config.control_socket or default_socket_path(
            self.device.ifname if self.device else "vpncloud"
        )
        try:
            self.control = ControlServer(path, self._control_request)
        except OSError as exc:
            log.warning("Control socket %s not available: %s", path, exc.strerror or exc)
            self.control = None
            return
        log.debug("Control socket at %s", path)

    def _open_metrics(self) -> None:
        if not self.config.metrics_listen:
            return
        from .metrics import LoopSnapshot, MetricsServer

        host, port = parse_metrics_listen(self.config.metrics_listen)
        snapshot = LoopSnapshot(self.post, lambda: self._control_request({"cmd": "status"})["status"], 5.0)
        try:
            self.metrics = MetricsServer(host, port, snapshot)
        except OSError as exc:
            raise Fatal(f"Failed to open metrics endpoint {host}:{port}: {exc.strerror or exc}") from None

    def _start_port_forwarding(self) -> None:
        """UPnP port mapping (spec 17), UDP socket mode only; discovery runs on a helper thread."""
        if not self.config.port_forwarding or getattr(self.sock, "own_address", None) is not None:
            return
        assert self.sock is not None
        from .portmap import PortMapper

        self.portmap = PortMapper(self.sock.port)

        def done(addrs: list[SocketAddr] | None) -> None:
            def apply() -> None:
                self.portmap_addrs = list(addrs or [])
                self._set_own_addresses()

            self.post(apply)

        self.portmap.start_async(done)

    def _set_own_addresses(self) -> None:
        if self.sock is None or self.node is None:
            return
        own = getattr(self.sock, "own_address", None)
        # behind the proxy our address is the one the proxy reported (spec 10.5)
        addrs = [mapped(own)] if own is not None else primary_addresses(self.sock.port)
        addrs += [a for a in self.portmap_addrs if a not in addrs]  # spec 10.5 item 3
        if not addrs:
            log.info("No own address found by route lookup (no default route); peers will tell us")
        self.node.set_own_addresses(addrs)

    def _add_configured_peer(self, name: str) -> None:
        full = normalize_peer(name)
        try:
            addrs = resolve(full)
        except OSError as exc:
            # The original exits here (quirk 12); we keep trying in the background instead.
            log.warning("Failed to resolve peer %s: %s; will retry", name, exc)
            addrs = []
        self.node.add_configured_peer(full, addrs, self.now())

    # --- the loop ----------------------------------------------------------------------------------

    def run(self) -> int:
        """Register fds and signals, run until SIGTERM/SIGINT/SIGQUIT, shut down cleanly."""
        assert self.sock is not None and self.device is not None
        self.sel.register(self.sock.fileno(), selectors.EVENT_READ, self._on_socket)
        self.sel.register(self.device.fileno(), selectors.EVENT_READ, self._on_device)
        self.sel.register(self._wake_r, selectors.EVENT_READ, self._on_wake)
        if self.control is not None:
            self.sel.register(self.control.fileno(), selectors.EVENT_READ, self._on_control_accept)
        if self.metrics is not None:
            # the serving thread starts here, in the process that runs the loop (after --daemon's fork)
            self.metrics.start()
            log.info("Serving metrics on http://%s:%d/metrics", *self.metrics.address)
        old = self._install_signals()
        try:
            self.hooks.fire("vpn_started", self._env())
            sd_notify("READY=1")
            log.info("Running")
            while not self.stop_requested:
                timeout = min(max(self.node.get_timer() - self.now(), 0.0), 1.0)
                try:
                    ready = self.sel.select(timeout)
                except InterruptedError:
                    ready = []
                if len(ready) > 1:
                    # established peers first: the listening socket may be full of a flood
                    listen_fd = self.sock.fileno()
                    ready.sort(key=lambda item: item[0].fd == listen_fd)
                self._peers_busy = False
                for key, _mask in ready:
                    key.data(key)
                now = self.now()
                if now >= self.node.get_timer():
                    # key expiry compares wall time; the core's own clock is monotonic
                    self.node.set_wall_time(time.time())
                    self.node.handle_timer(now)
                    if self.portmap is not None:
                        self.portmap.renew_if_due(now)
                    self._flush()
                    self._sync_peer_sockets()
                self._flush()
                if self.reload_requested:
                    self.reload_requested = False
                    self._reload()
            return self._shutdown()
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def _install_signals(self) -> dict[int, Any]:
        old: dict[int, Any] = {}

        def stop(_sig: int, _frame: object) -> None:
            self.stop_requested = True
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"\0")

        def hup(_sig: int, _frame: object) -> None:
            self.reload_requested = True
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"\0")

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            old[sig] = signal.signal(sig, stop)
        old[signal.SIGHUP] = signal.signal(signal.SIGHUP, hup)
        return old

    def _on_socket(self, key: selectors.SelectorKey) -> None:
        assert self.sock is not None
        busy = self._peers_busy
        self._read_socket(self.sock, LISTEN_BATCH_BUSY if busy else None)

    def _on_peer_socket(self, sock: Any) -> None:
        self._peers_busy = True
        self._read_socket(sock, None)

    def _read_socket(self, sock: Any, limit: int | None) -> None:
        if self.sock_gro:
            self._on_socket_gro(sock, min(limit or SOCKET_TRAIN_BATCH, SOCKET_TRAIN_BATCH))
            return
        try:
            batch = sock.recv_batch() if limit is None else sock.recv_batch(limit)
        except OSError as exc:
            # only the proxy client raises here: without its session nobody can be reached
            log.error("%s", exc)
            self.exit_code = EXIT_FATAL
            self.stop_requested = True
            return
        now = self.now()
        node = self.node
        i = 0
        n = len(batch)
        while i < n:
            # runs from one source go through the batch path (same result, less work per datagram)
            addr = batch[i][1]
            j = i + 1
            while j < n and batch[j][1] == addr:
                j += 1
            if j - i == 1:
                self._guard(node.receive_datagram, batch[i][0], addr, now)
            else:
                self._guard(node.receive_datagrams, [d for d, _ in batch[i:j]], addr, now)
            i = j
        self._flush()

    def _on_socket_gro(self, sock: Any, limit: int) -> None:
        """Offload mode: each read is a GRO train of datagrams from one source (any split)."""
        receive = self.node.receive_datagram
        receive_train = self.node.receive_train
        now = self.now()
        for data, seg, addr in sock.recv_trains(limit):
            try:
                if seg >= len(data):
                    receive(data, addr, now)
                else:
                    receive_train(data, seg, addr, now)
            except Exception as exc:
                log.error("Unexpected error while processing input: %s: %s", type(exc).__name__, exc)
                log.debug("Details", exc_info=True)
        self._flush()

    def _sync_peer_sockets(self) -> None:
        """One connected socket per established peer (issue 24): opened when a peer is there,
        closed when it is gone; a roaming peer is a new address, so it gets a new socket."""
        listener = self.sock
        if not self.peer_sockets_on or self.node is None or not isinstance(listener, UdpSocket):
            return
        wanted = self.node.peers
        socks = self.peer_socks
        failed = self._peer_sock_failed
        for addr in [a for a in socks if a not in wanted]:
            self._close_peer_socket(addr)
        failed.intersection_update(wanted)
        for addr in wanted:
            if addr in socks or addr in failed or len(socks) >= MAX_PEER_SOCKETS:
                continue
            try:
                peer_sock = listener.connect_peer(addr)
            except OSError as exc:
                # the listening socket still receives everything from this peer; no retry each tick
                failed.add(addr)
                log.debug("No own socket for peer %s: %s", _peer_text(addr), exc.strerror or exc)
                continue
            peer_sock.set_buffers()
            socks[addr] = peer_sock
            self.sel.register(
                peer_sock.fileno(), selectors.EVENT_READ, lambda _key, s=peer_sock: self._on_peer_socket(s)
            )

    def _close_peer_socket(self, addr: SocketAddr) -> None:
        peer_sock = self.peer_socks.pop(addr)
        # what is still queued there is lost, as on any peer that goes away
        self.peer_socket_reads += peer_sock.received
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(peer_sock.fileno())
        peer_sock.close()

    def _update_socket_interest(self) -> None:
        """Watch write readiness only while the proxy client has output waiting."""
        sock = self.sock
        wants = getattr(sock, "wants_write", None)
        if sock is None or wants is None:
            return
        if wants():
            sock.flush()
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if wants() else 0)
        with contextlib.suppress(KeyError, ValueError):
            if self.sel.get_key(sock.fileno()).events != events:
                self.sel.modify(sock.fileno(), events, self._on_socket)

    def _on_device(self, _key: selectors.SelectorKey) -> None:
        assert self.device is not None
        if self.vnet:
            self._on_device_vnet()
            return
        packets: list[bytes] = []
        for _ in range(DEVICE_BATCH):
            try:
                packet = self.device.read()
            except OSError as exc:
                log.error("Failed to read from device %s: %s", self.device.ifname, exc.strerror)
                break
            if packet is None:
                break
            packets.append(packet)
        now = self.now()
        node = self.node
        run: list[bytes] = []
        run_key: bytes | None = None
        tap = self.device.device_type == "tap"
        for packet in packets:
            # consecutive packets between the same two addresses go through the batch path
            if tap:
                # both MACs and a first VLAN tag, if any, are in the first 16 bytes (parse_frame)
                key = packet[:16] if len(packet) >= 16 else None
            else:
                version = packet[0] >> 4 if packet else 0
                key = packet[12:20] if version == 4 else packet[8:40] if version == 6 else None
            if key is None or key != run_key:
                if run:
                    self._guard(node.receive_packets, run, now)
                run = []
                run_key = key
            run.append(packet)
        if run:
            self._guard(node.receive_packets, run, now)
        self._flush()

    def _on_device_vnet(self) -> None:
        """Offload mode: reads are virtio header + packet (super-packets are segmented here)."""
        assert self.device is not None
        read = self.device.read_raw
        receive = self.node.receive_packet
        receive_super = self.node.receive_super_packet
        segmenter = _frame_segmenter if self.device.device_type == "tap" else _segmenter
        now = self.now()
        pending = 0
        for _ in range(DEVICE_BATCH):
            try:
                raw = read()
            except OSError as exc:
                log.error("Failed to read from device %s: %s", self.device.ifname, exc.strerror)
                break
            if raw is None:
                break
            if len(raw) <= offload.VNET_HDR_LEN:
                continue
            try:
                if raw[1] == 0:
                    if raw[0] & offload.F_NEEDS_CSUM:
                        # checksum offsets count from the start of the packet or frame: TUN and TAP alike
                        receive(offload.segment(raw[:10], raw[10:])[0], now)
                    else:
                        receive(raw[offload.VNET_HDR_LEN :], now)
                else:
                    self.gso_reads += 1
                    receive_super(raw, segmenter(raw), now)
            except offload.OffloadError as exc:
                log.debug("Dropping a packet from the device: %s", exc)
            except Exception as exc:
                log.error("Unexpected error while processing input: %s: %s", type(exc).__name__, exc)
                log.debug("Details", exc_info=True)
            pending += len(raw)
            if pending >= DEVICE_FLUSH_BYTES:
                self._flush()
                pending = 0
        self._flush()

    def _send_all(self, out: list[tuple[bytes | Train, SocketAddr]]) -> None:
        """Send the node's datagrams; runs to one address go out as UDP GSO trains when possible."""
        sock = self.sock
        assert sock is not None
        if not getattr(sock, "gso", False) or len(out) == 1:
            for data, addr in out:
                if type(data) is Train:
                    send_train = getattr(sock, "send_train", None)
                    if send_train is not None:
                        send_train(data, addr)
                    else:
                        for d in data.datagrams():
                            sock.send(d, addr)
                else:
                    sock.send(data, addr)
            return
        run: list[bytes] = []
        run_addr: SocketAddr | None = None
        for data, addr in out:
            if type(data) is Train:
                # keeps the order: what came before goes first
                if run:
                    sock.send_many(run, run_addr)
                    run = []
                    run_addr = None
                sock.send_train(data, addr)
                continue
            if addr != run_addr:
                if run:
                    sock.send_many(run, run_addr)
                run = []
                run_addr = addr
            run.append(data)
        if run:
            sock.send_many(run, run_addr)

    def _on_wake(self, _key: selectors.SelectorKey) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._wake_r, 4096):
                pass
        while True:
            try:
                task = self.tasks.get_nowait()
            except queue.Empty:
                break
            self._guard(task)

    def _on_control_accept(self, _key: selectors.SelectorKey) -> None:
        assert self.control is not None
        conn = self.control.on_accept()
        if conn is not None:
            self.sel.register(conn, selectors.EVENT_READ, self._on_control_client)

    def _on_control_client(self, key: selectors.SelectorKey) -> None:
        assert self.control is not None
        conn = key.fileobj
        assert isinstance(conn, socket.socket)
        fd = conn.fileno()
        done = self.control.on_client(conn)
        if done:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(fd)

    def _guard(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call into the node; a bug triggered by one input is logged, never fatal for the daemon."""
        try:
            fn(*args)
        except Exception as exc:
            log.error("Unexpected error while processing input: %s: %s", type(exc).__name__, exc)
            log.debug("Details", exc_info=True)

    # --- node output and events -------------------------------------------------------------------

    def _flush(self) -> None:
        node = self.node
        if node is None:
            return
        assert self.sock is not None
        out = node.take_output()
        if out:
            self._send_all(out)
        if self.device is not None:
            if self.vnet:
                items = node.take_device_output()
                if items:
                    coalesce = (
                        offload.coalesce_frames if self.device.device_type == "tap" else offload.coalesce
                    )
                    for write in coalesce(items):
                        if write[1]:
                            self.gso_writes += 1
                        self.device.write_raw(write)
            else:
                write = self.device.write_raw
                for item in node.take_device_output():
                    if type(item) is PacketRows:
                        # rows decrypted from one GRO train: written from the buffer, no copies
                        for packet in item.views():
                            write(packet)
                    elif type(item) is not SuperPacketView:
                        # (super-packets are only announced, so only sent, with device offloads)
                        write(item)
        self._peers_changed = False
        while True:
            event = node.next_event()
            if event is None:
                break
            self._guard(self._on_event, event)
        if self._peers_changed:
            self._sync_peer_sockets()
        # events may have queued datagrams (e.g. connects after beacon loads)
        for data, addr in node.datagrams_to_send():
            self.sock.send(data, addr)
        self._update_socket_interest()

    def _on_event(self, event: Any) -> None:
        from vpncloud.core import node as n

        if isinstance(event, (n.PeerConnected, n.PeerDisconnected, n.PeerTimedOut)):
            self._peers_changed = True
        if isinstance(event, n.PeerConnecting):
            self.hooks.fire(
                "peer_connecting", self._env(**peer_env(self.node, event.addr, _peer_text(event.addr)))
            )
        elif isinstance(event, n.PeerConnected):
            log.info("Peer %s connected (node id %s)", _peer_text(event.addr), event.node_id.hex())
            self.hooks.fire(
                "peer_connected",
                self._env(
                    **peer_env(self.node, event.addr, _peer_text(event.addr)),
                    CLAIMS=" ".join(str(c) for c in event.claims),
                    NODE_ID=event.node_id.hex(),
                ),
            )
        elif isinstance(event, n.PeerDisconnected):
            peer = format_sockaddr(event.addr) if event.raw_addr else _peer_text(event.addr)
            extra = peer_env(self.node, event.addr, peer)
            if event.node_id is not None:
                extra["NODE_ID"] = event.node_id.hex()
            self.hooks.fire("peer_disconnected", self._env(**extra))
        elif isinstance(event, n.ClaimsChanged):
            if self.routes is not None:
                self.routes.sync(self.node.remote_claims())
        elif isinstance(event, n.StatsDue):
            if self.stats_file is not None:
                self.stats_file.write(event.text)
            if event.statsd is not None and self.config.statsd_server and self.sock is not None:
                send_statsd(self.sock, self.config.statsd_server, event.statsd)
        elif isinstance(event, n.BeaconStore):
            if self.config.beacon_store:
                store_beacon(self.config.beacon_store, event.beacon, self.config.beacon_password or "")
        elif isinstance(event, n.BeaconLoad):
            if self.config.beacon_load:
                self._load_beacon(self.config.beacon_load)
        elif isinstance(event, n.OwnAddressesDue):
            self._set_own_addresses()
        elif isinstance(event, n.ResolvePeer):
            self._resolve_async(event.name)
        elif isinstance(event, n.PeerTimedOut):
            log.info("Peer %s timed out", _peer_text(event.addr))

    def _load_beacon(self, source: str) -> None:
        password = self.config.beacon_password or ""

        def on_text(text: str) -> None:
            def apply() -> None:
                from vpncloud.core.beacon import hour_stamp

                addrs = beacon_addresses(text, password, hour_stamp(self.now()))
                log.info("Loaded beacon with peers: %s", ", ".join(format_sockaddr(a) for a in addrs) or "-")
                self.node.beacon_loaded(addrs, self.now())

            self.post(apply)

        load_beacon(source, password, on_text)

    def _resolve_async(self, name: str) -> None:
        def work() -> None:
            try:
                addrs = resolve(name)
            except OSError as exc:
                log.warning("Failed to resolve %s: %s", name, exc)
                return
            self.post(lambda: self.node.peer_resolved(name, addrs, self.now()))

        threading.Thread(target=work, daemon=True, name="resolve").start()

    # --- control and reload ------------------------------------------------------------------------

    def _control_request(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        if cmd == "status":
            status = self.node.status(self.now())
            status["interface"] = self.device.ifname if self.device else None
            status["version"] = VERSION_TEXT
            status["pid"] = os.getpid()
            # Public, and what an orchestrator compares with its keystore to detect a wrong key.
            status["public_key"] = base62.encode(self.node.crypto.identity.public_key)
            status["uptime_secs"] = round(self.now() - self.started, 1)
            dropped = getattr(getattr(self.node, "traffic", None), "dropped", None)
            if dropped is not None:
                totals = dropped.as_dict()
                status["invalid_protocol_total"] = {
                    "bytes": totals.get("in_bytes_total", 0),
                    "packets": totals.get("in_packets_total", 0),
                }
            status["routes"] = sorted(self.routes.installed) if self.routes else []
            status["dataplane"] = self._dataplane_status()
            status["memory"] = _memory_status()
            return {"ok": True, "status": status}
        return {"ok": False, "error": f"unknown command {cmd!r} (known: status)"}

    def _dataplane_status(self) -> dict[str, Any]:
        """Data-plane mode, offloads and which peers get super-packets (issue 9)."""
        node = self.node
        sock = self.sock
        return {
            "mode": self.mode,
            "kernels": fastpath.KERNELS,
            "device_offloads": self.device.offloads if self.device is not None and self.vnet else 0,
            "udp_gso": bool(getattr(sock, "gso", False)),
            "udp_gro": self.sock_gro,
            "device_gso_reads": self.gso_reads,
            "device_gso_writes": self.gso_writes,
            "super_features": node.super_features,
            "super_peers": sorted(
                _peer_text(addr) for addr, peer in node.peers.items() if node.super_features and peer.features
            ),
            # issue 24: where datagrams were read (a flood only reaches the listening socket)
            "peer_sockets": len(self.peer_socks),
            "listen_socket_datagrams": getattr(sock, "received", 0),
            "peer_socket_datagrams": self.peer_socket_reads
            + sum(p.received for p in self.peer_socks.values()),
        }

    def _reload(self) -> None:
        """SIGHUP: re-read the config; new peers, trusted keys and claims apply without dropping sessions."""
        if self.reload is None:
            log.warning("Received SIGHUP but there is no config to reload")
            return
        log.info("Reloading configuration")
        try:
            new = self.reload()
            new.validate()
            identity = build_identity(new)
            crypto = build_crypto_config(new, identity=identity, speeds=self.speeds)
            missing = [a for a, _ in crypto.algorithms if self.speeds is None or a not in self.speeds]
            if missing:
                crypto = build_crypto_config(new, identity=identity)
            node_config = build_node_config(
                new, port=self.sock.port if self.sock else 0, auto_claim_ip=self.auto_claim_ip
            )
        except ConfigError as exc:
            log.error("Reload failed, keeping the old configuration: %s", exc)
            return
        now = self.now()
        self.node.reconfigure(node_config, crypto, now)
        new.security_file = self.config.security_file
        try:
            security = self._read_security(new)
        except ConfigError as exc:
            log.error("Reload of the security file failed, keeping the old one: %s", exc)
            security = self.security
        # reconfigure installed a fresh identity: expiry and ACL go on again either way
        self._apply_security(security)
        old_peers = set(self.node.configured_peers())
        new_peers = [normalize_peer(p) for p in new.peers]
        for name in old_peers - set(new_peers):
            self.node.remove_configured_peer(name)
        new.routes = self.config.routes
        new.control_socket = self.config.control_socket
        if new.metrics_listen != self.config.metrics_listen:
            log.warning("metrics-listen changed: the metrics endpoint moves at the next restart")
        new.metrics_listen = self.config.metrics_listen
        new.stats_interval = self.config.stats_interval
        self.config = new
        for name in new_peers:
            if name not in old_peers:
                self._add_configured_peer(name)
        self.hooks = Hooks(new.hook, new.hooks)
        self._flush()
        log.info("Configuration reloaded")

    # --- security file (ACL, key expiry; ours) -----------------------------------------------------

    def _read_security(self, cfg: Config | None = None) -> Security:
        """The security file: --security-file (must exist) or NAME.security.yaml beside --config."""
        cfg = cfg or self.config
        path = cfg.security_file or security_default_path(cfg.config_path)
        if path is None:
            return Security()
        return load_security_file(path, required=cfg.security_file is not None)

    def _apply_security(self, security: Security) -> None:
        assert self.node is not None
        apply_security(self.node, security)
        self.security = security
        if security.acl is not None or security.key_expiry:
            log.info(
                "Security file: %s, %d trusted keys with expiry",
                "ACL enforced" if security.acl is not None else "no ACL",
                len(security.key_expiry),
            )

    # --- shutdown ----------------------------------------------------------------------------------

    def _shutdown(self) -> int:
        self.hooks.fire("vpn_shutdown", self._env())
        sd_notify("STOPPING=1")
        self.node.shutdown(self.now())
        self._flush()
        remove_beacon_file(self.config.beacon_store)
        self.hooks.join(2.0)
        self.close()
        return self.exit_code

    def close(self) -> None:
        """Run ifdown, close the device (removes it) and the sockets."""
        ifname = self.device.ifname if self.device else ""
        if self.device is not None:
            if self.config.ifdown:
                run_sync(self.config.ifdown, {"IFNAME": ifname}, "ifdown command")
            self.device.close()
            self.device = None
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self.stats_file is not None:
            self.stats_file.close()
            self.stats_file = None
        if self.portmap is not None:
            self.portmap.stop()  # spec 17: the mapping is removed at exit
            self.portmap = None
        for addr in list(self.peer_socks):
            self._close_peer_socket(addr)
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        # never close the same numbers twice: they may belong to something else by then
        self._wake_r = self._wake_w = -1
        with contextlib.suppress(Exception):
            self.sel.close()


def _segmenter(raw: bytes) -> Callable[[], list[bytes] | PacketRows]:
    """Deferred TSO/USO segmentation of one device read (only done for peers without T2)."""
    return lambda: offload.segment_any(raw[: offload.VNET_HDR_LEN], raw[offload.VNET_HDR_LEN :])


def _frame_segmenter(raw: bytes) -> Callable[[], list[bytes] | PacketRows]:
    """:func:`_segmenter` for a TAP device (Ethernet frames)."""
    return lambda: offload.segment_frame(raw[: offload.VNET_HDR_LEN], raw[offload.VNET_HDR_LEN :])


class _Rng:
    """OS randomness with the ``random()`` the node uses for shuffles."""

    def randbytes(self, n: int) -> bytes:
        return os.urandom(n)

    def random(self) -> float:
        return int.from_bytes(os.urandom(7), "big") / float(1 << 56)


def _kernel_at_least(major: int, minor: int) -> bool:
    """Before Linux 5.7 a connected socket could be picked from a reuseport group for datagrams of
    other sources, so peer sockets would steal the listening socket's handshakes."""
    try:
        parts = os.uname().release.split(".")
        return (int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)) >= (major, minor)
    except (IndexError, ValueError):
        return False


def _memory_status() -> dict[str, Any]:
    """RSS now and at its peak, and which heavy optional modules are loaded (issue 21): a feature
    that imports one eagerly shows up here, and in the test that reads it. ``twin_modules``: those
    of the kernels' Python twin, which a daemon with the C kernels must not have loaded."""
    vm: dict[str, int] = {}
    with contextlib.suppress(OSError), open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                vm[key] = int(value.split()[0])
    return {
        "vm_rss_kb": vm.get("VmRSS", 0),
        "vm_hwm_kb": vm.get("VmHWM", 0),
        "optional_modules": loaded_optional(),
        "twin_modules": loaded_optional(TWIN_MODULES),
    }


def _peer_text(addr: SocketAddr) -> str:
    return format_sockaddr(nice(addr))


def peer_env(node: Node | None, addr: SocketAddr, text: str) -> dict[str, str]:
    """A hook's peer variables: ``PEER`` is the node's key for the peer (what status shows, the
    synthetic address for a relayed peer); ``RELAY`` / ``RELAY_NODE_ID`` say which relay carries a
    relayed peer (absent for direct peers, ``RELAY`` also when the relay's session is already gone)."""
    env = {"PEER": text}
    via = node.relay.relay_of(addr) if node is not None and node.relay is not None else None
    if via is not None:
        relay_id, relay_addr = via
        env["RELAY_NODE_ID"] = relay_id.hex()
        if relay_addr is not None:
            env["RELAY"] = _peer_text(relay_addr)
    return env


def run_daemon(config: Config, reload: Callable[[], Config] | None = None) -> int:
    """Run a node until it is told to stop; returns the exit status (spec 20.5)."""
    daemon = Daemon(config, reload)
    try:
        daemon.setup()
    except ConfigError as exc:
        if "Either password or private key" in str(exc):
            # spec 20.5: the original exits 0 after this message
            log.error("%s", exc)
            daemon.close()
            return EXIT_OK
        log.error("%s", exc)
        daemon.close()
        return EXIT_FATAL
    except (Fatal, PrivilegeError) as exc:
        log.error("%s", exc)
        daemon.close()
        return EXIT_FATAL
    except Exception as exc:  # a bug must still end in one clear line and a clean device removal
        log.error("Startup failed: %s: %s", type(exc).__name__, exc)
        log.debug("Details", exc_info=True)
        daemon.close()
        return EXIT_FATAL
    try:
        return daemon.run()
    except Exception as exc:
        log.error("Fatal error: %s: %s", type(exc).__name__, exc)
        log.debug("Details", exc_info=True)
        daemon.close()
        return EXIT_FATAL
