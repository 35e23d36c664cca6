"""A local VpnCloud lab: one network namespace per node, all joined by a bridge, each running the daemon.

Lab file format (YAML)::

    name: lab                    # mesh name: [a-z0-9]{1,16}; namespaces "vlab<hash>.<name>.<node>"
    underlay:
      subnet: 10.98.0.0/24       # the bridge LAN every node is plugged into (IPv4, required)
      subnet6: fd98::/64         # optional IPv6 on the same LAN
    common:                      # optional: original config merged under every node's config
      crypto: {password: secret}
    nodes:
      - name: a                  # [a-z][a-z0-9-]{0,11}
        address: 10.98.0.1       # underlay IPv4 (optional: the subnet's N-th host for the N-th node)
        address6: fd98::1        # optional; default the N-th host of subnet6 when that is set
        config:                  # the node's ORIGINAL VpnCloud 2.4 config (kebab-case keys, spec 14.2)
          ip: 10.99.0.1/24
          mode: router
          device: {type: tun}
          peers: [b]             # a lab node name (optionally "b:PORT") becomes its underlay address
          port-forwarding: false

``common`` and ``config`` are merged recursively (mappings merged, the node's scalars and lists win).
Each node's merged config is written (mode 0600, the password is in it) to the state dir
``/run/vpncloud-lab/<name>/<node>.net`` and the node is started, detached, inside its namespace as
``<python> -m vpncloud --config FILE --control-socket SOCK --log-file LOG``. The state dir also holds
``state.json`` (namespaces, pids, spec), the control sockets and the logs; it is mode 0700.

Python API (used by ``vpncloud lab`` and by the mesh orchestrator's ``apply --target lab``):
:func:`load_spec`, :func:`lab_up`, :func:`lab_down`, :func:`lab_status`, :func:`reload_node`,
:func:`restart_node`. All raise :class:`LabError` with a readable message; results are plain pydantic
data (:class:`LabStatus`), rendered only in :mod:`vpncloud.lab.cli`.

The state root can be moved with the ``state_dir`` arguments or the ``VPNCLOUD_LAB_DIR`` environment
variable (tests use that, so they never touch /run/vpncloud-lab).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vpncloud.lab import netns
from vpncloud.lab.netns import Netns, NetnsError, SignalGuard, Topology
from vpncloud.sourcefile import (
    ErrorItem,
    InputError,
    Located,
    compose,
    construct,
    host_port_problem,
    validation_items,
    wrong_kind,
)

__all__ = [
    "DEFAULT_STATE_ROOT",
    "LabError",
    "LabNode",
    "LabReality",
    "LabSpec",
    "LabStatus",
    "NodeReality",
    "NodeStatus",
    "PeerStatus",
    "Underlay",
    "add_node",
    "lab_down",
    "lab_spec",
    "lab_status",
    "lab_up",
    "load_spec",
    "node_status",
    "parse_spec",
    "read_lab",
    "reload_node",
    "remove_node",
    "restart_node",
    "set_hosts",
]

DEFAULT_STATE_ROOT = Path("/run/vpncloud-lab")
#: Interface name of every node's underlay veth.
UNDERLAY_IF = "eth0"
#: Short name of the switch namespace; "_" cannot start a node name, so it never collides.
SWITCH = "_sw"
DEFAULT_PORT = 3210
#: The module run as the node daemon (``python -m vpncloud``).
DAEMON_MODULE = "vpncloud"
#: Unix socket paths are limited to 108 bytes (sun_path) including the NUL.
_SUN_PATH_MAX = 107


class LabError(RuntimeError):
    """A lab operation failed; the message says what and, for node failures, shows the log tail.

    ``errors`` holds one entry per problem (a lab file may have several), each printed as one error.
    """

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or [message]


# --------------------------------------------------------------------------------------------------
# The lab file
# --------------------------------------------------------------------------------------------------


class Underlay(BaseModel):
    """The bridge LAN joining all nodes."""

    model_config = ConfigDict(extra="forbid")

    subnet: ipaddress.IPv4Network
    subnet6: ipaddress.IPv6Network | None = None


class LabNode(BaseModel):
    """One node: its name, underlay address(es) and original VpnCloud config (kebab-case mapping)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,11}$")
    address: ipaddress.IPv4Address | None = None
    address6: ipaddress.IPv6Address | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    security: dict[str, Any] | None = Field(
        default=None,
        description="Content of the node's security file (ACL, key expiry), written beside its config "
        "as NAME.security.yaml where the daemon finds it.",
    )

    @field_validator("config")
    @classmethod
    def _kebab_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in v:
            if not isinstance(key, str):
                raise ValueError(f"config key {key!r} is not a string")
        return v


class LabSpec(BaseModel):
    """A whole lab: mesh name, underlay and nodes. Addresses left out are filled in by index."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9]{1,16}$")
    underlay: Underlay
    common: dict[str, Any] = Field(default_factory=dict)
    hosts: str | None = Field(
        default=None,
        description="Lines for /etc/hosts inside every node's namespace (names of the mesh's nodes).",
    )
    nodes: list[LabNode] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> LabSpec:
        names = [n.name for n in self.nodes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate node names: {', '.join(dupes)}")
        hosts4 = list(self.underlay.subnet.hosts())
        hosts6 = self.underlay.subnet6.hosts() if self.underlay.subnet6 else None
        for i, node in enumerate(self.nodes):
            if node.address is None:
                if i >= len(hosts4):
                    raise ValueError(
                        f"underlay subnet {self.underlay.subnet} too small for {len(names)} nodes"
                    )
                node.address = hosts4[i]
            elif node.address not in self.underlay.subnet or node.address in (
                self.underlay.subnet.network_address,
                self.underlay.subnet.broadcast_address,
            ):
                raise ValueError(
                    f"node {node.name}: address {node.address} is not a host of {self.underlay.subnet}"
                )
            if node.address6 is None and hosts6 is not None:
                node.address6 = next(hosts6)
            elif node.address6 is not None:
                if self.underlay.subnet6 is None:
                    raise ValueError(f"node {node.name}: address6 given but underlay.subnet6 is not set")
                if node.address6 not in self.underlay.subnet6:
                    raise ValueError(f"node {node.name}: {node.address6} is not in {self.underlay.subnet6}")
        for attr in ("address", "address6"):
            vals = [getattr(n, attr) for n in self.nodes if getattr(n, attr) is not None]
            if len(vals) != len(set(vals)):
                raise ValueError(f"duplicate underlay {attr} among nodes")
        for node in self.nodes:
            cfg = self.node_config(node)
            vpn = cfg.get("ip")
            if vpn is not None:
                try:
                    ipaddress.IPv4Interface(str(vpn))
                except ValueError as e:
                    raise ValueError(f"node {node.name}: config ip {vpn!r} is not A.B.C.D[/len]") from e
            if not isinstance(cfg.get("peers", []), list):
                raise ValueError(f"node {node.name}: config peers must be a list")
            for peer in cfg.get("peers", []):
                # Names of lab nodes are resolved by now; what is left must be an address or host name.
                problem = host_port_problem(str(peer), port_required=False)
                if problem:
                    raise ValueError(f"node {node.name}: config peers: {problem}")
        return self

    def node(self, name: str) -> LabNode:
        """The node called ``name`` (:class:`LabError` if there is none)."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise LabError(f"lab {self.name!r} has no node {name!r} (nodes: {', '.join(self.names())})")

    def names(self) -> list[str]:
        """Node names in file order."""
        return [n.name for n in self.nodes]

    def node_config(self, node: LabNode) -> dict[str, Any]:
        """The original config written for ``node``: ``common`` merged with the node's ``config``,
        with peers naming a lab node replaced by that node's underlay address."""
        cfg = _merge(self.common, node.config)
        peers = cfg.get("peers")
        if isinstance(peers, list):
            cfg["peers"] = [self._resolve_peer(str(p)) for p in peers]
        return cfg

    def _resolve_peer(self, peer: str) -> str:
        host, port = peer, ""
        if peer.count(":") == 1:  # "b:3211"; IPv6 literals have more colons and are left alone
            host, port = peer.split(":")
        for n in self.nodes:
            if n.name == host:
                return f"{n.address}:{port or self._port(n)}"
        return peer

    def _port(self, node: LabNode) -> int:
        listen = str(self.node_config_raw(node).get("listen", DEFAULT_PORT))
        tail = listen.rsplit(":", 1)[-1]
        return int(tail) if tail.isdigit() else DEFAULT_PORT

    def node_config_raw(self, node: LabNode) -> dict[str, Any]:
        """``common`` merged with the node's config, peers untouched."""
        return _merge(self.common, node.config)

    def vpn_ip(self, node: LabNode) -> str | None:
        """The node's VPN IPv4 address (config ``ip`` without the prefix length), if configured."""
        ip = self.node_config_raw(node).get("ip")
        return str(ipaddress.IPv4Interface(str(ip)).ip) if ip is not None else None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_spec(text: str, source: str = "<lab file>") -> LabSpec:
    """Parse lab-file YAML text; :class:`LabError` names the file, line and field that are wrong.

    The message has one problem per line in the style of the mesh loader (``FILE:LINE: FIELD: MESSAGE``).
    """
    try:
        root = compose(text, source)
        data = construct(root, source) if root is not None else None
    except InputError as e:
        raise _file_error(e.items) from None
    if not isinstance(data, dict):
        line = root.start_mark.line + 1 if root is not None else None
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        item = ErrorItem(source, line, "", f"expected a mapping with name, underlay and nodes, got {got}")
        raise _file_error([item])
    wrong = wrong_kind(source, data, "lab")
    if wrong is not None:
        raise _file_error(wrong.items)
    try:
        return LabSpec.model_validate(data)
    except ValidationError as e:
        raise _file_error(validation_items(e, LabSpec, Located(root), source)) from None


def _file_error(items: list[ErrorItem]) -> LabError:
    return LabError("\n".join(str(i) for i in items), [str(i) for i in items])


def load_spec(path: str | Path) -> LabSpec:
    """Read and parse a lab file (:class:`LabError` if it is missing or invalid)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise LabError(f"{p}: cannot read lab file: {e.strerror}") from None
    return parse_spec(text, str(p))


# --------------------------------------------------------------------------------------------------
# Status data
# --------------------------------------------------------------------------------------------------


class PeerStatus(BaseModel):
    """A connected peer as a node reports it."""

    addr: str
    node_id: str | None = None
    name: str | None = None  # lab node name, when the node id or address is one of ours
    algorithm: str | None = None


class NodeStatus(BaseModel):
    """One node of a running lab."""

    name: str
    namespace: str
    pid: int | None
    running: bool
    underlay: str
    underlay6: str | None = None
    vpn_ip: str | None = None
    node_id: str | None = None
    peers: list[PeerStatus] = Field(default_factory=list)
    socket: str | None = None  # the node's control socket (vpncloud status --socket PATH)
    #: The daemon's own status object (not part of the lab's JSON: callers pick what they show).
    daemon: dict[str, Any] | None = Field(default=None, exclude=True, repr=False)
    error: str | None = None  # why the status could not be read


class LabStatus(BaseModel):
    """A snapshot of a lab: nodes, whether every node sees every other, and the ping matrix."""

    name: str
    state_dir: str
    nodes: list[NodeStatus]
    whole: bool
    #: ping[src][dst] = True/False; None where a node has no VPN IP or src is not running.
    ping: dict[str, dict[str, bool | None]] = Field(default_factory=dict)

    @property
    def ping_ok(self) -> bool:
        """Whether every ping of the matrix answered."""
        return all(v is True for row in self.ping.values() for v in row.values())

    def missing_links(self) -> list[tuple[str, str]]:
        """(node, other) pairs where ``node`` does not list ``other`` as a connected peer."""
        out = []
        for n in self.nodes:
            have = {p.name for p in n.peers}
            out += [(n.name, o.name) for o in self.nodes if o.name != n.name and o.name not in have]
        return out


# --------------------------------------------------------------------------------------------------
# State directory
# --------------------------------------------------------------------------------------------------


def state_root(state_dir: Path | None = None) -> Path:
    """The directory holding one subdirectory per lab."""
    if state_dir is not None:
        return Path(state_dir)
    env = os.environ.get("VPNCLOUD_LAB_DIR")
    return Path(env) if env else DEFAULT_STATE_ROOT


def _lab_dir(name: str, state_dir: Path | None) -> Path:
    if not re.match(r"^[a-z0-9]{1,16}$", name):
        raise LabError(f"invalid lab name {name!r}")
    return state_root(state_dir) / name


def ns_prefix(name: str, state_dir: Path | None = None) -> str:
    """Namespace prefix of lab ``name`` under state root ``state_dir``: ``vlab<hash>.<name>.``.

    The hash of the resolved state root keeps two labs of the same name with different state roots
    (parallel tests, a user's lab next to a test run) apart; with the default root it is stable, so
    ``down`` finds the namespaces of a crashed ``up``. The dot cannot occur in a lab name, so one
    lab's prefix is never a prefix of another's, and "vlab" never matches the test prefixes ("vc").
    """
    root = str(state_root(state_dir).resolve())
    return f"vlab{hashlib.sha256(root.encode()).hexdigest()[:6]}.{name}."


def _read_state(d: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((d / "state.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_state(d: Path, state: dict[str, Any]) -> None:
    # 0600 like the configs: the spec in it holds every node's key or password.
    tmp = d / "state.json.tmp"
    _write_private(tmp, json.dumps(state, indent=2))
    tmp.replace(d / "state.json")


def _write_node_files(d: Path, spec: LabSpec, node: LabNode) -> None:
    """The node's config (0600: it holds the key) and, if any, its security file (no secrets)."""
    _write_private(d / f"{node.name}.net", yaml.safe_dump(spec.node_config(node), sort_keys=False))
    security = d / f"{node.name}.security.yaml"
    if node.security is None:
        with contextlib.suppress(FileNotFoundError):
            security.unlink()
    else:
        security.write_text(yaml.safe_dump(node.security, sort_keys=False))


def _write_private(path: Path, text: str) -> None:
    # Created 0600 from the start: the file holds the password or private key.
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------


def _python_env() -> dict[str, str]:
    env = dict(os.environ)
    # Make this very package importable for the child even when it is not installed.
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _vpncloud(*args: str) -> list[str]:
    return [sys.executable, "-m", DAEMON_MODULE, *args]


def check_daemon() -> None:
    """:class:`LabError` if ``python -m vpncloud`` cannot run here (e.g. the daemon is not built yet)."""
    try:
        res = subprocess.run(
            _vpncloud("--version"), capture_output=True, text=True, timeout=30, env=_python_env(), check=False
        )
    except subprocess.TimeoutExpired:
        raise LabError("the vpncloud daemon did not answer --version within 30 s") from None
    if res.returncode != 0:
        detail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        raise LabError(
            f"the vpncloud daemon is not available ({sys.executable} -m {DAEMON_MODULE}): {detail[0]}"
        )


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _register_socket(namespace: str, sock: Path | None) -> None:
    """Link (or unlink) ``vpncloud status``'s way from a namespace to its node's socket."""
    from vpncloud.daemon.control import NETNS_DIR, netns_socket_link

    link = Path(netns_socket_link(namespace))
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
    if sock is not None:
        Path(NETNS_DIR).mkdir(parents=True, exist_ok=True)
        link.symlink_to(sock.resolve())


def _unregister_prefix(prefix: str) -> None:
    """Drop the socket links of every namespace of one lab (its namespaces all share ``prefix``)."""
    from vpncloud.daemon.control import NETNS_DIR

    with contextlib.suppress(FileNotFoundError):
        for link in Path(NETNS_DIR).iterdir():
            if link.name.startswith(prefix):
                link.unlink(missing_ok=True)


def _is_our_daemon(pid: int | None, namespace: str, d: Path, node: str) -> bool:
    """Whether ``pid`` is still this node's daemon (pids get reused, so never signal on the pid alone).

    Inside its namespace is proof; so is a command line naming the node's config in this lab, which
    still holds once the namespace's name was deleted under a running daemon.
    """
    if not _pid_alive(pid):
        return False
    assert pid is not None
    if pid in netns.netns_pids(namespace):
        return True
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return str(d / f"{node}.net").encode() in argv


def _start_node(ns: Netns, d: Path, node: str) -> int:
    """Start the daemon for ``node`` in ``ns``, detached; return its pid.

    A shell inside the namespace starts the daemon in the background in a new session and exits, so
    the daemon is re-parented to init: it survives the lab command and never becomes our zombie.
    """
    cfg, sock, log, err = d / f"{node}.net", d / f"{node}.sock", d / f"{node}.log", d / f"{node}.stderr"
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()
    argv = _vpncloud("--config", str(cfg), "--control-socket", str(sock), "--log-file", str(log))
    script = 'exec "$@" </dev/null >>"$ERR" 2>&1 & echo $!'
    env = _python_env()
    env["ERR"] = str(err)
    res = subprocess.run(
        ns.exec_args(["setsid", "sh", "-c", script, "sh", *argv]),
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    if res.returncode != 0 or not res.stdout.strip().isdigit():
        raise LabError(f"could not start node {node}: {res.stderr.strip() or res.stdout.strip()}")
    _register_socket(ns.name, sock)
    return int(res.stdout.strip())


def _node_failure(d: Path, node: str, what: str) -> str:
    parts = [what]
    log = _tail(d / f"{node}.log")
    if log:
        parts.append(f"--- last lines of {d / f'{node}.log'} ---\n{log}")
    # The daemon logs to stderr as well; show stderr only when it adds something (a traceback, an
    # error printed before logging was set up), not as a second copy of the log.
    err = _tail(d / f"{node}.stderr")
    last = err.splitlines()[-1].strip() if err else ""
    if last and last not in log:
        parts.append(f"--- last lines of {d / f'{node}.stderr'} ---\n{err}")
    return "\n".join(parts)


def _query(sock: Path, timeout: float = 3.0) -> dict[str, Any]:
    """The node's status object through its control socket; LabError if it cannot be read.

    Talks to the socket in-process through ``vpncloud.daemon.control.request`` (fast: the wait loop
    polls every node twice a second); falls back to ``vpncloud status --json --socket SOCK`` if that
    client is not importable.
    """
    try:
        from vpncloud.daemon import control
    except ImportError:
        return _query_cli(sock, timeout)
    try:
        reply = control.request(str(sock), timeout=timeout)
    except Exception as e:  # ControlError and anything else a half-started node provokes
        raise LabError(f"status query failed: {e}") from None
    if not reply.get("ok"):
        raise LabError(f"status query failed: {reply.get('error', 'unknown error')}")
    status = reply.get("status")
    if not isinstance(status, dict):
        raise LabError("status query returned no status object")
    return status


def _query_cli(sock: Path, timeout: float) -> dict[str, Any]:
    try:
        res = subprocess.run(
            _vpncloud("status", "--json", "--socket", str(sock)),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_python_env(),
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise LabError(f"status query on {sock} timed out") from None
    if res.returncode != 0:
        msg = (res.stderr or res.stdout).strip().splitlines()
        raise LabError(f"status query failed: {msg[-1] if msg else res.returncode}")
    try:
        data = json.loads(res.stdout)
    except ValueError:
        raise LabError("status query returned no JSON") from None
    if not isinstance(data, dict):
        raise LabError("status query returned JSON that is not an object")
    return data


def _norm_id(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, list) and all(isinstance(x, int) for x in v):
        return bytes(v).hex()
    return str(v).lower()


def _host_of(addr: str) -> str:
    """``[::ffff:10.0.0.1]:3210``, ``10.0.0.1:3210``, ``('::ffff:10.0.0.1', 3210)`` -> ``10.0.0.1``."""
    s = addr.strip()
    m = re.match(r"^\(?\s*['\"]?([^'\"\s,]+)['\"]?\s*,\s*\d+\s*\)?$", s)
    if m:
        s = m.group(1)
    elif s.startswith("["):
        s = s[1:].split("]", 1)[0]
    elif s.count(":") == 1:
        s = s.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(s)
    except ValueError:
        return s
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return str(ip.ipv4_mapped)
    return str(ip)


def _peers_from(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Read the peers list defensively: a list of objects, or a mapping addr -> object."""
    peers = data.get("peers")
    out: list[dict[str, Any]] = []
    if isinstance(peers, list):
        for p in peers:
            if isinstance(p, dict):
                out.append(p)
            elif isinstance(p, str):
                out.append({"addr": p})
    elif isinstance(peers, dict):
        for k, v in peers.items():
            out.append({"addr": k, **v} if isinstance(v, dict) else {"addr": k})
    return out


def _peer_addr(p: dict[str, Any]) -> str:
    for key in ("addr", "address", "peer", "addrs", "addresses"):
        v = p.get(key)
        if isinstance(v, list) and v:
            v = v[0]
        if isinstance(v, list | tuple) and len(v) == 2:
            return f"{v[0]}:{v[1]}"
        if v:
            return str(v)
    return "?"


def _connected(p: dict[str, Any]) -> bool:
    # Only count peers that finished the handshake, if the daemon tells us.
    for key in ("connected", "established", "ready"):
        if key in p:
            return bool(p[key])
    state = p.get("state")
    return not (isinstance(state, str) and state.lower() not in ("connected", "established", "ready"))


# --------------------------------------------------------------------------------------------------
# Operations
# --------------------------------------------------------------------------------------------------


def _collect(state: dict[str, Any], d: Path, *, ping: bool) -> LabStatus:
    spec = LabSpec.model_validate(state["spec"])
    infos: dict[str, NodeStatus] = {}
    ids: dict[str, str] = {}
    by_host: dict[str, str] = {}
    raw: dict[str, list[dict[str, Any]]] = {}
    for node in spec.nodes:
        entry = state["nodes"][node.name]
        pid = entry.get("pid")
        running = _pid_alive(pid) and pid in netns.netns_pids(entry["namespace"])
        ns_status = NodeStatus(
            name=node.name,
            namespace=entry["namespace"],
            pid=pid,
            running=running,
            underlay=str(node.address),
            underlay6=str(node.address6) if node.address6 else None,
            vpn_ip=spec.vpn_ip(node),
            socket=str(d / f"{node.name}.sock"),
        )
        by_host[str(node.address)] = node.name
        if node.address6:
            by_host[str(node.address6)] = node.name
        if running:
            try:
                data = _query(d / f"{node.name}.sock")
                ns_status.daemon = data
                ns_status.node_id = _norm_id(data.get("node_id") or data.get("node-id") or data.get("id"))
                if ns_status.node_id:
                    ids[ns_status.node_id] = node.name
                raw[node.name] = [p for p in _peers_from(data) if _connected(p)]
            except LabError as e:
                ns_status.error = str(e)
        else:
            ns_status.error = "not running"
        infos[node.name] = ns_status
    for name, peers in raw.items():
        for p in peers:
            addr = _peer_addr(p)
            pid_ = _norm_id(p.get("node_id") or p.get("node-id") or p.get("id"))
            who = ids.get(pid_) if pid_ else None
            who = who or by_host.get(_host_of(addr))
            algo = p.get("algorithm") or p.get("algo")
            infos[name].peers.append(
                PeerStatus(addr=addr, node_id=pid_, name=who, algorithm=str(algo) if algo else None)
            )
    nodes = [infos[n] for n in spec.names()]
    whole = all(n.running and n.error is None for n in nodes) and all(
        {o.name for o in nodes if o.name != n.name} <= {p.name for p in n.peers} for n in nodes
    )
    status = LabStatus(name=spec.name, state_dir=str(d), nodes=nodes, whole=whole)
    if ping:
        status.ping = _ping_matrix(spec, state, infos)
    return status


def _ping_matrix(
    spec: LabSpec, state: dict[str, Any], infos: dict[str, NodeStatus]
) -> dict[str, dict[str, bool | None]]:
    jobs: list[tuple[str, str, str]] = []
    matrix: dict[str, dict[str, bool | None]] = {}
    for src in spec.nodes:
        matrix[src.name] = {}
        for dst in spec.nodes:
            if dst.name == src.name:
                continue
            ip = spec.vpn_ip(dst)
            if ip is None or not infos[src.name].running:
                matrix[src.name][dst.name] = None
            else:
                jobs.append((src.name, dst.name, ip))

    def one(job: tuple[str, str, str]) -> bool:
        try:
            return Netns(state["nodes"][job[0]]["namespace"]).ping(job[2], count=1, timeout=1)
        except NetnsError:
            return False

    # In parallel: a dead link costs the ping timeout once, not once per pair.
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(jobs)))) as pool:
        for job, ok in zip(jobs, pool.map(one, jobs), strict=True):
            matrix[job[0]][job[1]] = ok
    return matrix


def _wait_whole(
    state: dict[str, Any], d: Path, timeout: float, nodes: Iterable[str] | None = None
) -> LabStatus:
    deadline = time.monotonic() + timeout
    watch = set(nodes) if nodes is not None else set(state["nodes"])
    while True:
        for name in sorted(watch):
            if not _pid_alive(state["nodes"][name]["pid"]):
                raise LabError(_node_failure(d, name, f"node {name} exited early"))
        status = _collect(state, d, ping=False)
        if status.whole:
            # A fresh session may need a moment before the first packet crosses (device routes, ARP
            # inside the tunnel); retry the matrix until the deadline rather than fail at once.
            while True:
                status.ping = _ping_matrix(
                    LabSpec.model_validate(state["spec"]), state, {n.name: n for n in status.nodes}
                )
                if status.ping_ok or time.monotonic() >= deadline:
                    return status
                time.sleep(0.5)
        if time.monotonic() >= deadline:
            missing = ", ".join(f"{a}->{b}" for a, b in status.missing_links()) or "none"
            errors = "; ".join(f"{n.name}: {n.error}" for n in status.nodes if n.error)
            msg = f"mesh {status.name!r} not whole after {timeout:.0f} s; missing peer links: {missing}"
            if errors:
                msg += f"; status errors: {errors}"
            for name in sorted(watch):
                tail = _tail(d / f"{name}.log", 5)
                if tail:
                    msg += f"\n--- {name}.log ---\n{tail}"
            raise LabError(msg)
        time.sleep(0.5)


def lab_up(spec: LabSpec, state_dir: Path | None = None, *, timeout: float = 60.0) -> LabStatus:
    """Build the lab, start every node and wait (up to ``timeout`` s) until the mesh is whole.

    ``state_dir`` is the state ROOT (default ``/run/vpncloud-lab`` or ``$VPNCLOUD_LAB_DIR``); this
    lab's files go to ``<root>/<spec.name>/``. Returns the status with the ping matrix. On any failure
    (or SIGINT/SIGTERM) everything made so far is removed again and :class:`LabError` is raised.
    """
    d = _lab_dir(spec.name, state_dir)
    longest = max(len(str(d.resolve() / f"{n}.sock")) for n in spec.names())
    if longest > _SUN_PATH_MAX:
        raise LabError(f"state dir {d} is too deep: control socket paths would exceed {_SUN_PATH_MAX} bytes")
    old = _read_state(d)
    if old is not None and any(_pid_alive(n.get("pid")) for n in old.get("nodes", {}).values()):
        raise LabError(f"lab {spec.name!r} is already up (state in {d}); run 'vpncloud lab down' first")
    netns_missing = netns.requirements_missing()
    if netns_missing:
        raise LabError("the lab needs " + ", ".join(netns_missing))
    # Leftovers of a crashed run of the same lab would make namespace creation fail.
    _teardown(spec.name, d, ns_prefix(spec.name, state_dir))
    check_daemon()

    topo = Topology(ns_prefix(spec.name, state_dir))
    with SignalGuard():
        try:
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o700)
            state: dict[str, Any] = {
                "name": spec.name,
                "prefix": topo.prefix,
                "switch": topo.prefix + SWITCH,
                "spec": spec.model_dump(mode="json"),
                "nodes": {},
            }
            topo.switch(SWITCH)
            for node in spec.nodes:
                ns = _plug_node(topo, spec, node)
                state["nodes"][node.name] = {"namespace": ns.name, "pid": None}
            _write_state(d, state)
            for node in spec.nodes:
                _write_node_files(d, spec, node)
                ns = topo[node.name]
                state["nodes"][node.name]["pid"] = _start_node(ns, d, node.name)
                _write_state(d, state)
            return _wait_whole(state, d, timeout)
        except BaseException:
            with netns.signals_deferred():
                with contextlib.suppress(NetnsError):
                    topo.close()
                _unregister_prefix(topo.prefix)
                shutil.rmtree(d, ignore_errors=True)
            raise


def _plug_node(topo: Topology, spec: LabSpec, node: LabNode) -> Netns:
    """The node's namespace on the lab's switch, with its underlay addresses and hosts file."""
    addrs = [f"{node.address}/{spec.underlay.subnet.prefixlen}"]
    if node.address6 is not None and spec.underlay.subnet6 is not None:
        addrs.append(f"{node.address6}/{spec.underlay.subnet6.prefixlen}")
    ns = topo.node(node.name, *addrs, switch=SWITCH, ifname=UNDERLAY_IF)
    _write_hosts(ns.name, spec)
    return ns


def _hosts_text(spec: LabSpec) -> str | None:
    return "127.0.0.1 localhost\n::1 localhost\n" + spec.hosts if spec.hosts else None


def _write_hosts(namespace: str, spec: LabSpec) -> None:
    text = _hosts_text(spec)
    if text is not None:
        netns.write_netns_etc(namespace, "hosts", text)


def add_node(name: str, node: LabNode, state_dir: Path | None = None, hosts: str | None = None) -> int:
    """Plug a new node into running lab ``name`` and start it; the other nodes keep running.

    ``hosts`` replaces the lab's hosts lines (in every namespace). Returns the new daemon's pid; the
    caller reloads the other nodes so they learn the new peer, then waits for the mesh.
    """
    state, d = _load_state(name, state_dir)
    data = state["spec"]
    if any(n["name"] == node.name for n in data["nodes"]):
        raise LabError(f"lab {name!r} already has a node {node.name!r}")
    data = dict(data, nodes=[*data["nodes"], node.model_dump(mode="json")])
    if hosts is not None:
        data["hosts"] = hosts
    try:
        spec = LabSpec.model_validate(data)
    except ValidationError as e:
        raise LabError(f"node {node.name}: invalid node: {e.errors()[0]['msg']}") from None
    topo = Topology(state["prefix"])
    # The switch exists already: register it so the node is plugged into it, not into a new one.
    topo.namespaces[SWITCH] = Netns(state["switch"])
    with SignalGuard():
        try:
            ns = _plug_node(topo, spec, spec.node(node.name))
            state["spec"] = spec.model_dump(mode="json")
            state["nodes"][node.name] = {"namespace": ns.name, "pid": None}
            _write_state(d, state)
            _write_node_files(d, spec, spec.node(node.name))
            state["nodes"][node.name]["pid"] = _start_node(ns, d, node.name)
        except NetnsError as e:
            raise LabError(f"node {node.name}: could not add it to lab {name!r}: {e}") from None
        finally:
            _write_state(d, state)
    if hosts is not None:
        set_hosts(name, hosts, state_dir)
    pid = state["nodes"][node.name]["pid"]
    assert isinstance(pid, int)
    return pid


def remove_node(name: str, node: str, state_dir: Path | None = None) -> None:
    """Stop ``node`` of running lab ``name``, delete its namespace and files; the others keep running."""
    state, d = _load_state(name, state_dir)
    entry = state["nodes"].get(node)
    if entry is None:
        return
    pid = entry.get("pid")
    with SignalGuard(), netns.signals_deferred():
        if _pid_alive(pid) and pid in netns.netns_pids(entry["namespace"]):
            # SIGTERM first: the daemon says goodbye to its peers, so they drop it at once.
            netns.kill_pids([pid], grace=5.0)
        try:
            netns.delete_netns(entry["namespace"])
        except NetnsError as e:
            raise LabError(f"node {node}: could not remove its namespace: {e}") from None
        _register_socket(entry["namespace"], None)
        data = state["spec"]
        state["spec"] = dict(data, nodes=[n for n in data["nodes"] if n["name"] != node])
        del state["nodes"][node]
        _write_state(d, state)
        for suffix in (".net", ".security.yaml", ".sock", ".log", ".stderr"):
            with contextlib.suppress(FileNotFoundError):
                (d / f"{node}{suffix}").unlink()


def set_hosts(name: str, hosts: str, state_dir: Path | None = None) -> None:
    """Replace the hosts lines of every namespace of running lab ``name``."""
    state, d = _load_state(name, state_dir)
    state["spec"] = dict(state["spec"], hosts=hosts)
    spec = LabSpec.model_validate(state["spec"])
    for entry in state["nodes"].values():
        _write_hosts(entry["namespace"], spec)
    _write_state(d, state)


def _teardown(name: str, d: Path, prefix: str) -> bool:
    """Kill nodes, delete namespaces and the state dir. Returns whether anything was there."""
    found = False
    state = _read_state(d)
    if state is not None:
        found = True
        for node, entry in state.get("nodes", {}).items():
            pid = entry.get("pid")
            if _is_our_daemon(pid, entry.get("namespace", ""), d, node):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        # Give the daemons a moment to send CLOSE and remove their devices, then force.
        deadline = time.monotonic() + 5.0
        pids = [e.get("pid") for e in state.get("nodes", {}).values()]
        while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
            time.sleep(0.05)
        for node, entry in state.get("nodes", {}).items():
            # No namespace deletion reaches a daemon whose namespace lost its name: kill it by pid.
            if _is_our_daemon(entry.get("pid"), "", d, node):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(entry["pid"], signal.SIGKILL)
    _unregister_prefix(prefix)
    recorded_prefix = (state or {}).get("prefix")
    if isinstance(recorded_prefix, str) and recorded_prefix.endswith(f".{name}."):
        _unregister_prefix(recorded_prefix)
    try:
        gone = netns.cleanup_stale(prefix)
        # Also whatever the state file recorded (it may name a prefix of an older version).
        recorded = state.get("prefix") if state is not None else None
        if isinstance(recorded, str) and recorded.startswith("v") and recorded.endswith(f"{name}."):
            gone += netns.cleanup_stale(recorded)
    except NetnsError as e:
        raise LabError(f"could not remove the namespaces of lab {name!r}: {e}") from None
    found = found or bool(gone)
    if d.exists():
        found = True
        shutil.rmtree(d, ignore_errors=True)
    return found


def lab_down(name: str, state_dir: Path | None = None) -> bool:
    """Stop lab ``name``: kill its nodes, delete its namespaces and state dir.

    Idempotent: returns False if there was nothing to remove.
    """
    d = _lab_dir(name, state_dir)
    with SignalGuard(), netns.signals_deferred():
        return _teardown(name, d, ns_prefix(name, state_dir))


def _load_state(name: str, state_dir: Path | None) -> tuple[dict[str, Any], Path]:
    d = _lab_dir(name, state_dir)
    state = _read_state(d)
    if state is None:
        raise LabError(f"lab {name!r} is not up (no state in {d})")
    return state, d


def lab_spec(name: str, state_dir: Path | None = None) -> LabSpec:
    """The spec running lab ``name`` was built from (with every later node change)."""
    state, _ = _load_state(name, state_dir)
    return LabSpec.model_validate(state["spec"])


def node_status(name: str, node: str, state_dir: Path | None = None) -> tuple[NodeStatus, dict[str, Any]]:
    """One node of a running lab: its lab entry and the daemon's full status object."""
    state, d = _load_state(name, state_dir)
    LabSpec.model_validate(state["spec"]).node(node)
    entry = next(n for n in _collect(state, d, ping=False).nodes if n.name == node)
    if not entry.running:
        raise LabError(_node_failure(d, node, f"node {node} is not running"))
    return entry, _query(d / f"{node}.sock")


def lab_status(name: str, state_dir: Path | None = None, *, ping: bool = True) -> LabStatus:
    """Status table data and (with ``ping``) the ping matrix of a running lab."""
    state, d = _load_state(name, state_dir)
    return _collect(state, d, ping=ping)


class NodeReality(BaseModel):
    """What one node of a lab really is, read without changing anything."""

    name: str
    namespace: str
    namespace_present: bool
    running: bool
    pid: int | None = None
    socket: str
    socket_answers: bool = False
    device: str | None = Field(default=None, description="Interface the daemon reports.")
    device_present: bool = False
    config_matches: bool = Field(description="The config file on disk is the one the lab wrote.")
    hosts_matches: bool = Field(default=True, description="The namespace's hosts file is the lab's.")
    public_key: str | None = Field(default=None, description="Public key the daemon uses.")
    version: str | None = None
    error: str | None = None


class LabReality(BaseModel):
    """A lab as it is: whether its state exists, its switch and every recorded node."""

    name: str
    state_dir: str
    up: bool = Field(description="The lab's state directory exists.")
    switch_present: bool = False
    nodes: dict[str, NodeReality] = Field(default_factory=dict)


def _read_node(spec: LabSpec, entry: dict[str, Any], d: Path, node: LabNode, names: set[str]) -> NodeReality:
    ns_name = entry.get("namespace", "")
    pid = entry.get("pid")
    present = ns_name in names
    running = present and _pid_alive(pid) and pid in netns.netns_pids(ns_name)
    expected = yaml.safe_dump(spec.node_config(node), sort_keys=False)
    try:
        on_disk = (d / f"{node.name}.net").read_text()
    except OSError:
        on_disk = None
    sock = d / f"{node.name}.sock"
    hosts = _hosts_text(spec)
    try:
        hosts_on_disk: str | None = (netns.NETNS_ETC / ns_name / "hosts").read_text()
    except OSError:
        hosts_on_disk = None
    reality = NodeReality(
        hosts_matches=hosts is None or hosts_on_disk == hosts,
        name=node.name,
        namespace=ns_name,
        namespace_present=present,
        running=running,
        pid=pid,
        socket=str(sock),
        # Digests, so the key inside the config never sits in a comparison that might be printed.
        config_matches=on_disk is not None
        and hashlib.sha256(on_disk.encode()).digest() == hashlib.sha256(expected.encode()).digest(),
    )
    if not running:
        return reality
    try:
        data = _query(sock)
    except LabError as e:
        reality.error = str(e)
        return reality
    reality.socket_answers = True
    reality.public_key = data.get("public_key") if isinstance(data.get("public_key"), str) else None
    reality.version = str(data.get("version")) if data.get("version") else None
    device = data.get("interface")
    if isinstance(device, str):
        reality.device = device
        reality.device_present = device in Netns(ns_name).links()
    return reality


def read_lab(name: str, state_dir: Path | None = None) -> LabReality:
    """Read what lab ``name`` really is (processes, namespaces, devices, sockets, config files)."""
    d = _lab_dir(name, state_dir)
    state = _read_state(d)
    if state is None:
        return LabReality(name=name, state_dir=str(d), up=False)
    names = set(netns.list_netns())
    spec = LabSpec.model_validate(state["spec"])
    nodes = {
        node.name: _read_node(spec, state["nodes"][node.name], d, node, names)
        for node in spec.nodes
        if node.name in state.get("nodes", {})
    }
    return LabReality(
        name=name, state_dir=str(d), up=True, switch_present=state.get("switch") in names, nodes=nodes
    )


def _replace_node(state: dict[str, Any], d: Path, node: LabNode | str) -> str:
    spec = LabSpec.model_validate(state["spec"])
    if isinstance(node, str):
        spec.node(node)
        return node
    old = spec.node(node.name)
    if node.address is None:
        node = node.model_copy(update={"address": old.address})
    if node.address6 is None and old.address6 is not None:
        node = node.model_copy(update={"address6": old.address6})
    if node.address != old.address or node.address6 != old.address6:
        raise LabError(f"node {node.name}: changing the underlay address needs lab down/up")
    data = spec.model_dump(mode="json")
    data["nodes"] = [node.model_dump(mode="json") if n["name"] == node.name else n for n in data["nodes"]]
    try:
        spec = LabSpec.model_validate(data)
    except ValidationError as e:
        raise LabError(f"node {node.name}: invalid node: {e.errors()[0]['msg']}") from None
    state["spec"] = spec.model_dump(mode="json")
    _write_node_files(d, spec, spec.node(node.name))
    _write_state(d, state)
    return node.name


def reload_node(name: str, node: LabNode | str, state_dir: Path | None = None) -> None:
    """Rewrite ``node``'s config (when a :class:`LabNode` is given) and send it SIGHUP.

    The daemon reloads peers, trusted keys and claims without dropping sessions. Changing a node's
    underlay address is refused (that is a topology change: ``lab down`` / ``lab up``).
    """
    state, d = _load_state(name, state_dir)
    node_name = _replace_node(state, d, node)
    entry = state["nodes"][node_name]
    pid = entry.get("pid")
    if not (_pid_alive(pid) and pid in netns.netns_pids(entry["namespace"])):
        raise LabError(_node_failure(d, node_name, f"node {node_name} is not running"))
    os.kill(pid, signal.SIGHUP)


def restart_node(
    name: str, node: LabNode | str, state_dir: Path | None = None, *, timeout: float = 60.0
) -> LabStatus:
    """Stop ``node`` (SIGTERM, then SIGKILL), rewrite its config if a :class:`LabNode` is given, start
    it again and wait until the mesh is whole."""
    state, d = _load_state(name, state_dir)
    node_name = _replace_node(state, d, node)
    entry = state["nodes"][node_name]
    pid = entry.get("pid")
    if _pid_alive(pid) and pid in netns.netns_pids(entry["namespace"]):
        netns.kill_pids([pid], grace=5.0)
    entry["pid"] = _start_node(Netns(entry["namespace"]), d, node_name)
    _write_state(d, state)
    return _wait_whole(state, d, timeout, nodes=[node_name])
