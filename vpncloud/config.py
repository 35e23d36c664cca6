"""The original VpnCloud 2.4 configuration: YAML file (v2, v1 fallback), command line, merge (spec 14).

Three layers, merged in this order (spec 14.1): built-in defaults, the YAML file given with
``--config``, then the command-line flags. Lists (``peers``, ``claims``, ``advertise-addresses``,
``crypto.trusted-keys``) are concatenated, ``crypto.algorithms`` is replaced by a non-empty later list,
``hooks`` are overwritten per event, every other value given later replaces the earlier one.

The YAML parser walks PyYAML's *node* tree instead of the loaded Python objects. That way a string key
sees the raw scalar text (``password: 0123`` stays ``"0123"``, ``listen: 3210`` becomes ``"3210"``) and
every error can name the line it comes from.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vpncloud.core.errors import ConfigError, DecodeError
from vpncloud.core.types import DeviceType, Mode, Range, SocketAddr, parse_listen
from vpncloud.lazy import LazyModule

if TYPE_CHECKING:
    import yaml

    from vpncloud.core.guard import GuardConfig
    from vpncloud.core.node import NodeConfig
    from vpncloud.core.peer_crypto import CryptoConfig

if not TYPE_CHECKING:
    # PyYAML (about 1.5 MB of RSS) only when config files are read or written
    yaml = LazyModule("yaml")

__all__ = [
    "DEFAULT_PORT",
    "VERSION_TEXT",
    "Config",
    "ConfigError",
    "ConfigFile",
    "GuardSection",
    "build_arg_parser",
    "build_crypto_config",
    "build_guard_config",
    "build_node_config",
    "config_from_args",
    "load_config_file",
    "load_config_text",
    "migrate_config_file",
]

VERSION_TEXT = "VpnCloud v2.4.0"
DEFAULT_PORT = 3210
HOOK_EVENTS = (
    "device_setup",
    "device_configured",
    "vpn_started",
    "vpn_shutdown",
    "peer_connecting",
    "peer_connected",
    "peer_disconnected",
)
MODES = ("normal", "hub", "switch", "router")
DEVICE_TYPES = ("tun", "tap")


# --- the file model (every value optional: None means "not given") --------------------------------


@dataclass
class DeviceSection:
    """``device:`` mapping."""

    type: str | None = None
    name: str | None = None
    path: str | None = None
    fix_rp_filter: bool | None = None


@dataclass
class CryptoSection:
    """``crypto:`` mapping. ``__repr__`` hides the secrets so they never reach a log line."""

    password: str | None = None
    private_key: str | None = None
    public_key: str | None = None
    trusted_keys: list[str] = field(default_factory=list)
    algorithms: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return (
            f"CryptoSection(password={'***' if self.password is not None else None}, "
            f"private_key={'***' if self.private_key is not None else None}, "
            f"public_key={self.public_key!r}, trusted_keys={self.trusted_keys!r}, "
            f"algorithms={self.algorithms!r})"
        )


@dataclass
class BeaconSection:
    """``beacon:`` mapping."""

    store: str | None = None
    load: str | None = None
    interval: int | None = None
    password: str | None = field(default=None, repr=False)


@dataclass
class StatsdSection:
    """``statsd:`` mapping."""

    server: str | None = None
    prefix: str | None = None


@dataclass
class GuardSection:
    """``handshake-guard:`` mapping (ours): the flood guard's limits (``core/guard.py``); unset = default.

    Field names are those of :class:`~vpncloud.core.guard.GuardConfig`, so that the section maps onto it
    one to one.
    """

    per_source_rate: float | None = None
    per_source_burst: float | None = None
    per_host_new_rate: float | None = None
    per_host_new_burst: float | None = None
    global_rate: float | None = None
    global_burst: float | None = None
    returning_rate: float | None = None
    returning_burst: float | None = None
    max_sources: int | None = None
    amplification_budget: bool | None = None
    budget_ttl: float | None = None
    max_pending_per_host: int | None = None
    max_pending: int | None = None
    replay_ttl: float | None = None
    drop_log_interval: float | None = None

    def given(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class ConfigFile:
    """One configuration source (a file or the command line), all fields optional (spec 14.2)."""

    device: DeviceSection = field(default_factory=DeviceSection)
    ip: str | None = None
    advertise_addresses: list[str] = field(default_factory=list)
    ifup: str | None = None
    ifdown: str | None = None
    crypto: CryptoSection = field(default_factory=CryptoSection)
    listen: str | None = None
    peers: list[str] = field(default_factory=list)
    peer_timeout: int | None = None
    keepalive: int | None = None
    beacon: BeaconSection = field(default_factory=BeaconSection)
    mode: str | None = None
    switch_timeout: int | None = None
    claims: list[str] = field(default_factory=list)
    auto_claim: bool | None = None
    port_forwarding: bool | None = None
    pid_file: str | None = None
    stats_file: str | None = None
    statsd: StatsdSection = field(default_factory=StatsdSection)
    user: str | None = None
    group: str | None = None
    hook: str | None = None
    hooks: dict[str, str] = field(default_factory=dict)
    # ours
    metrics_listen: str | None = None
    handshake_guard: GuardSection = field(default_factory=GuardSection)

    def to_yaml(self) -> str:
        """Serialise every field with kebab-case keys, unset ones as null (like ``migrate-config``)."""
        return yaml.safe_dump(_kebab(self), sort_keys=False, default_flow_style=False)


_OURS_OPTIONAL = frozenset({"metrics_listen", "handshake_guard"})


def _kebab(obj: Any) -> dict[str, Any]:
    # only dataclass field names become kebab-case; hook event names keep their underscores.
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        unset = value is None or (isinstance(value, GuardSection) and not value.given())
        if unset and f.name in _OURS_OPTIONAL:
            continue  # an unset key of ours stays out: the file reads like the original's
        if dataclasses.is_dataclass(value):
            value = _kebab(value)
        elif isinstance(value, list | dict):
            value = type(value)(value)
        out[f.name.replace("_", "-")] = value
    return out


# --- strict YAML walking ---------------------------------------------------------------------------

_STR, _INT, _BOOL, _STRLIST, _STRMAP = "str", "int", "bool", "strlist", "strmap"
_POSNUM, _COUNT = "posnum", "count"
_NULL_TAG = "tag:yaml.org,2002:null"
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_STR_TAG = "tag:yaml.org,2002:str"

Schema = dict[str, Any]

_DEVICE_SCHEMA: Schema = {
    "type": ("type", ("enum", DEVICE_TYPES)),
    "name": ("name", _STR),
    "path": ("path", _STR),
    "fix-rp-filter": ("fix_rp_filter", _BOOL),
}
_CRYPTO_SCHEMA: Schema = {
    "password": ("password", _STR),
    "private-key": ("private_key", _STR),
    "public-key": ("public_key", _STR),
    "trusted-keys": ("trusted_keys", _STRLIST),
    "algorithms": ("algorithms", _STRLIST),
}
_BEACON_SCHEMA: Schema = {
    "store": ("store", _STR),
    "load": ("load", _STR),
    "interval": ("interval", _INT),
    "password": ("password", _STR),
}
_STATSD_SCHEMA: Schema = {"server": ("server", _STR), "prefix": ("prefix", _STR)}
_GUARD_SCHEMA: Schema = {
    "per-source-rate": ("per_source_rate", _POSNUM),
    "per-source-burst": ("per_source_burst", _POSNUM),
    "per-host-new-rate": ("per_host_new_rate", _POSNUM),
    "per-host-new-burst": ("per_host_new_burst", _POSNUM),
    "global-rate": ("global_rate", _POSNUM),
    "global-burst": ("global_burst", _POSNUM),
    "returning-rate": ("returning_rate", _POSNUM),
    "returning-burst": ("returning_burst", _POSNUM),
    "max-sources": ("max_sources", _COUNT),
    "amplification-budget": ("amplification_budget", _BOOL),
    "budget-ttl": ("budget_ttl", _POSNUM),
    "max-pending-per-host": ("max_pending_per_host", _COUNT),
    "max-pending": ("max_pending", _COUNT),
    "replay-ttl": ("replay_ttl", _POSNUM),
    "drop-log-interval": ("drop_log_interval", _POSNUM),
}
_TOP_SCHEMA: Schema = {
    "device": ("device", (DeviceSection, _DEVICE_SCHEMA)),
    "ip": ("ip", _STR),
    "advertise-addresses": ("advertise_addresses", _STRLIST),
    "ifup": ("ifup", _STR),
    "ifdown": ("ifdown", _STR),
    "crypto": ("crypto", (CryptoSection, _CRYPTO_SCHEMA)),
    "listen": ("listen", _STR),
    "peers": ("peers", _STRLIST),
    "peer-timeout": ("peer_timeout", _INT),
    "keepalive": ("keepalive", _INT),
    "beacon": ("beacon", (BeaconSection, _BEACON_SCHEMA)),
    "mode": ("mode", ("enum", MODES)),
    "switch-timeout": ("switch_timeout", _INT),
    "claims": ("claims", _STRLIST),
    "auto-claim": ("auto_claim", _BOOL),
    "port-forwarding": ("port_forwarding", _BOOL),
    "pid-file": ("pid_file", _STR),
    "stats-file": ("stats_file", _STR),
    "statsd": ("statsd", (StatsdSection, _STATSD_SCHEMA)),
    "user": ("user", _STR),
    "group": ("group", _STR),
    "hook": ("hook", _STR),
    "hooks": ("hooks", _STRMAP),
    "metrics-listen": ("metrics_listen", _STR),
    "handshake-guard": ("handshake_guard", (GuardSection, _GUARD_SCHEMA)),
}


def _where(node: yaml.Node) -> str:
    return f"line {node.start_mark.line + 1}"


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG


def _scalar_str(node: yaml.Node, key: str) -> str | None:
    if _is_null(node):
        return None
    if not isinstance(node, yaml.ScalarNode):
        raise ConfigError(f"{key}: expected a string ({_where(node)})")
    if node.tag == _BOOL_TAG:
        # serde's string fields do not take booleans; quoting is the way to say "true".
        raise ConfigError(f"{key}: expected a string, got a boolean ({_where(node)}); quote it")
    # numbers are accepted as their text (spec 14.2: "listen: 3210"), so the raw scalar is used.
    return str(node.value)


def _scalar_int(node: yaml.Node, key: str, bits: int = 32) -> int | None:
    if _is_null(node):
        return None
    if not isinstance(node, yaml.ScalarNode) or node.tag != _INT_TAG:
        raise ConfigError(f"{key}: expected an unsigned integer ({_where(node)})")
    text = str(node.value).replace("_", "")
    try:
        value = int(text, 10)
    except ValueError:
        raise ConfigError(f"{key}: expected a decimal unsigned integer ({_where(node)})") from None
    if not 0 <= value < (1 << bits):
        raise ConfigError(f"{key}: {value} is out of range ({_where(node)})")
    return value


def _scalar_positive(node: yaml.Node, key: str) -> float | None:
    if _is_null(node):
        return None
    if not isinstance(node, yaml.ScalarNode) or node.tag not in (_INT_TAG, _FLOAT_TAG):
        raise ConfigError(f"{key}: expected a positive number ({_where(node)})")
    try:
        value = float(str(node.value).replace("_", ""))
    except ValueError:
        raise ConfigError(f"{key}: expected a decimal number ({_where(node)})") from None
    # NaN fails every comparison, so "not > 0" catches it along with zero and negatives
    if not 0 < value < float("inf"):
        raise ConfigError(f"{key}: {node.value} is not a positive number ({_where(node)})")
    return value


def _scalar_count(node: yaml.Node, key: str) -> int | None:
    value = _scalar_int(node, key)
    if value == 0:
        raise ConfigError(f"{key}: must be at least 1 ({_where(node)})")
    return value


def _scalar_bool(node: yaml.Node, key: str) -> bool | None:
    if _is_null(node):
        return None
    if not isinstance(node, yaml.ScalarNode) or node.tag != _BOOL_TAG:
        raise ConfigError(f"{key}: expected true or false ({_where(node)})")
    return str(node.value).lower() in ("true", "yes", "on", "y")


def _str_list(node: yaml.Node, key: str) -> list[str]:
    if _is_null(node):
        return []
    if not isinstance(node, yaml.SequenceNode):
        raise ConfigError(f"{key}: expected a list ({_where(node)})")
    out = []
    for item in node.value:
        value = _scalar_str(item, key)
        if value is None:
            raise ConfigError(f"{key}: list entries must not be empty ({_where(item)})")
        out.append(value)
    return out


def _pairs(node: yaml.Node, key: str) -> list[tuple[str, yaml.Node, yaml.Node]]:
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{key}: expected a mapping ({_where(node)})")
    seen: set[str] = set()
    out: list[tuple[str, yaml.Node, yaml.Node]] = []
    for knode, vnode in node.value:
        if not isinstance(knode, yaml.ScalarNode):
            raise ConfigError(f"{key}: keys must be plain names ({_where(knode)})")
        name = str(knode.value)
        if name in seen:
            raise ConfigError(f"{key}: duplicate key {name!r} ({_where(knode)})")
        seen.add(name)
        out.append((name, knode, vnode))
    return out


def _convert(kind: Any, node: yaml.Node, key: str) -> Any:
    if kind == _STR:
        return _scalar_str(node, key)
    if kind == _INT:
        return _scalar_int(node, key)
    if kind == _BOOL:
        return _scalar_bool(node, key)
    if kind == _POSNUM:
        return _scalar_positive(node, key)
    if kind == _COUNT:
        return _scalar_count(node, key)
    if kind == _STRLIST:
        return _str_list(node, key)
    if kind == _STRMAP:
        if _is_null(node):
            return {}
        result: dict[str, str] = {}
        for name, _k, vnode in _pairs(node, key):
            value = _scalar_str(vnode, f"{key}.{name}")
            if value is None:
                raise ConfigError(f"{key}.{name}: expected a command ({_where(vnode)})")
            result[name] = value
        return result
    if isinstance(kind, tuple) and kind[0] == "enum":
        value = _scalar_str(node, key)
        if value is not None and value not in kind[1]:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(kind[1])} ({_where(node)})")
        return value
    cls, schema = kind
    if _is_null(node):
        return cls()
    return _walk(node, schema, cls, key + ".")


def _walk(node: yaml.Node, schema: Schema, cls: Callable[..., Any], prefix: str) -> Any:
    values: dict[str, Any] = {}
    for name, knode, vnode in _pairs(node, prefix.rstrip(".") or "config"):
        entry = schema.get(name)
        if entry is None:
            hint = ""
            if name.replace("_", "-") in schema:
                hint = f" (did you mean {name.replace('_', '-')!r}? keys are kebab-case)"
            raise ConfigError(f"unknown key '{prefix}{name}'{hint} ({_where(knode)})")
        attr, kind = entry
        values[attr] = _convert(kind, vnode, prefix + name)
    return cls(**values)


def _compose(text: str) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"invalid YAML: {problem}{where}") from None
    except RecursionError:
        raise ConfigError("invalid YAML: nested too deeply") from None


def _parse_v2(root: yaml.Node | None) -> ConfigFile:
    if root is None or _is_null(root):
        return ConfigFile()
    result: ConfigFile = _walk(root, _TOP_SCHEMA, ConfigFile, "")
    return result


# --- version 1 (spec 14.6) -------------------------------------------------------------------------

_V1_KEYS: dict[str, Any] = {
    "device_type": ("enum", DEVICE_TYPES),
    "device_name": _STR,
    "device_path": _STR,
    "ifup": _STR,
    "ifdown": _STR,
    "crypto": ("enum", ("chacha20", "aes256", "aes128")),
    "shared_key": _STR,
    "magic": _STR,
    "port": _INT,
    "listen": _STR,
    "peers": _STRLIST,
    "peer_timeout": _INT,
    "keepalive": _INT,
    "beacon_store": _STR,
    "beacon_load": _STR,
    "beacon_interval": _INT,
    "mode": ("enum", MODES),
    "dst_timeout": _INT,
    "subnets": _STRLIST,
    "port_forwarding": _BOOL,
    "pid_file": _STR,
    "stats_file": _STR,
    "statsd_server": _STR,
    "statsd_prefix": _STR,
    "user": _STR,
    "group": _STR,
}


def _parse_v1(root: yaml.Node | None) -> dict[str, Any]:
    if root is None or _is_null(root):
        return {}
    values: dict[str, Any] = {}
    for name, _k, vnode in _pairs(root, "config"):
        key = name.replace("-", "_")
        kind = _V1_KEYS.get(key)
        if kind is None:
            continue  # version 1 ignored unknown keys
        values[key] = _convert(kind, vnode, name)
    if "port" in values and values["port"] is not None and values["port"] > 65535:
        raise ConfigError("port: out of range")
    if not values:
        # The original takes any mapping as version 1 and starts with the password "none": a typo'd
        # or corrupted file would give a node anyone can join. Version 1 needs one version-1 key.
        unknown = sorted({name for name, _k, _v in _pairs(root, "config")})
        shown = ", ".join(unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        raise ConfigError(f"no known config key (unknown: {shown})")
    return values


def convert_v1(old: dict[str, Any], warn: Callable[[str], None] | None = None) -> ConfigFile:
    """Convert a parsed version-1 config to version 2 (spec 14.6); ``warn`` receives the notices."""
    say = warn or (lambda _msg: None)
    if old.get("device_type") is None:
        say("Default device type changed from TAP to TUN")
    say("The --ip option can be used to configure the interface address")
    say("All crypto algorithms are enabled")
    if old.get("shared_key") is None:
        say('Shared key is not set, using password "none"')
    if old.get("magic") is not None:
        say("Network magic is not supported anymore")
    if old.get("port") is not None:
        say("The port option is replaced by the listen option")
    say("The default peer timeout changed from 10 minutes to 5 minutes")
    say("Version 2 nodes cannot communicate with version 1 nodes")
    listen = old.get("listen")
    if listen is None and old.get("port") is not None:
        listen = str(old["port"])
    return ConfigFile(
        device=DeviceSection(
            type=old.get("device_type"), name=old.get("device_name"), path=old.get("device_path")
        ),
        ifup=old.get("ifup"),
        ifdown=old.get("ifdown"),
        crypto=CryptoSection(password=old.get("shared_key") or "none"),
        listen=listen,
        peers=list(old.get("peers") or []),
        peer_timeout=old.get("peer_timeout"),
        keepalive=old.get("keepalive"),
        beacon=BeaconSection(
            store=old.get("beacon_store"),
            load=old.get("beacon_load"),
            interval=old.get("beacon_interval"),
            password=old.get("shared_key"),
        ),
        mode=old.get("mode"),
        switch_timeout=old.get("dst_timeout"),
        claims=list(old.get("subnets") or []),
        port_forwarding=old.get("port_forwarding"),
        pid_file=old.get("pid_file"),
        stats_file=old.get("stats_file"),
        statsd=StatsdSection(server=old.get("statsd_server"), prefix=old.get("statsd_prefix")),
        user=old.get("user"),
        group=old.get("group"),
    )


def load_config_text(
    text: str, *, allow_v1: bool = False, warn: Callable[[str], None] | None = None
) -> ConfigFile:
    """Parse config file text as the version-2 schema; raise :class:`ConfigError` with a clear message.

    With ``allow_v1`` a file that is not valid version 2 is parsed as version 1 and converted
    (the daemon's behaviour, spec 14.1); without it (the orchestrator's validation) it is an error.
    """
    root = _compose(text)
    try:
        return _parse_v2(root)
    except ConfigError as v2_error:
        if not allow_v1:
            raise
        try:
            old = _parse_v1(root)
        except ConfigError as v1_error:
            raise ConfigError(
                "Config file is neither version 2 nor version 1 "
                f"(version 2: {v2_error}; version 1: {v1_error})"
            ) from None
        if warn is not None:
            warn(f"Config file is not version 2 ({v2_error}); trying version 1")
            warn(
                "Please migrate the config file to version 2 with: vpncloud migrate-config --config-file FILE"
            )
        return convert_v1(old, warn)


def read_config_text(path: str) -> str:
    """The text of a config file; ``ConfigError`` if it cannot be read or is not UTF-8."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError as exc:
        raise ConfigError(f"Failed to open config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"Config file {path} is not UTF-8 text") from None


def load_config_file(path: str, *, warn: Callable[[str], None] | None = None) -> ConfigFile:
    """Read and parse a config file with the version-1 fallback (spec 14.1)."""
    return load_config_text(read_config_text(path), allow_v1=True, warn=warn)


def migrate_config_file(path: str, warn: Callable[[str], None] | None = None) -> None:
    """``migrate-config``: parse FILE as version 1, keep it as FILE.orig, write version 2 (mode 0600)."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"Failed to open config file {path}: {exc.strerror or exc}") from None
    new = convert_v1(_parse_v1(_compose(text)), warn)
    os.rename(path, path + ".orig")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(new.to_yaml())
    os.chmod(path, 0o600)


# --- the effective, merged configuration ----------------------------------------------------------


@dataclass
class Config:
    """Defaults merged with the file and the command line (the original's ``Config``)."""

    device_type: str = "tun"
    device_name: str = "vpncloud%d"
    device_path: str | None = None
    fix_rp_filter: bool = False
    ip: str | None = None
    advertise_addresses: list[str] = field(default_factory=list)
    ifup: str | None = None
    ifdown: str | None = None
    crypto: CryptoSection = field(default_factory=CryptoSection)
    listen: str = str(DEFAULT_PORT)
    peers: list[str] = field(default_factory=list)
    peer_timeout: int = 300
    keepalive: int | None = None
    beacon_store: str | None = None
    beacon_load: str | None = None
    beacon_interval: int = 3600
    beacon_password: str | None = field(default=None, repr=False)
    mode: str = "normal"
    switch_timeout: int = 300
    claims: list[str] = field(default_factory=list)
    auto_claim: bool = True
    port_forwarding: bool = True
    daemonize: bool = False
    pid_file: str | None = None
    stats_file: str | None = None
    statsd_server: str | None = None
    statsd_prefix: str | None = None
    user: str | None = None
    group: str | None = None
    hook: str | None = None
    hooks: dict[str, str] = field(default_factory=dict)
    # command-line only (not in the file)
    log_file: str | None = None
    verbose: bool = False
    quiet: bool = False
    # ours
    control_socket: str | None = None
    security_file: str | None = None
    metrics_listen: str | None = None
    handshake_guard: GuardSection = field(default_factory=GuardSection)
    routes: bool = True
    stats_interval: int = 60
    config_path: str | None = None

    def merge(self, src: ConfigFile) -> None:
        """Merge one source over this config (spec 14.1 rules)."""
        d = src.device
        self.device_type = _pick(d.type, self.device_type)
        self.device_name = _pick(d.name, self.device_name)
        self.device_path = _pick(d.path, self.device_path)
        self.fix_rp_filter = _pick(d.fix_rp_filter, self.fix_rp_filter)
        self.ip = _pick(src.ip, self.ip)
        self.advertise_addresses = self.advertise_addresses + list(src.advertise_addresses)
        self.ifup = _pick(src.ifup, self.ifup)
        self.ifdown = _pick(src.ifdown, self.ifdown)
        c = src.crypto
        self.crypto = CryptoSection(
            password=_pick(c.password, self.crypto.password),
            private_key=_pick(c.private_key, self.crypto.private_key),
            public_key=_pick(c.public_key, self.crypto.public_key),
            trusted_keys=self.crypto.trusted_keys + list(c.trusted_keys),
            algorithms=list(c.algorithms) if c.algorithms else self.crypto.algorithms,
        )
        self.listen = _pick(src.listen, self.listen)
        self.peers = self.peers + list(src.peers)
        self.peer_timeout = _pick(src.peer_timeout, self.peer_timeout)
        self.keepalive = _pick(src.keepalive, self.keepalive)
        b = src.beacon
        self.beacon_store = _pick(b.store, self.beacon_store)
        self.beacon_load = _pick(b.load, self.beacon_load)
        self.beacon_interval = _pick(b.interval, self.beacon_interval)
        self.beacon_password = _pick(b.password, self.beacon_password)
        self.mode = _pick(src.mode, self.mode)
        self.switch_timeout = _pick(src.switch_timeout, self.switch_timeout)
        self.claims = self.claims + list(src.claims)
        self.auto_claim = _pick(src.auto_claim, self.auto_claim)
        self.port_forwarding = _pick(src.port_forwarding, self.port_forwarding)
        self.pid_file = _pick(src.pid_file, self.pid_file)
        self.stats_file = _pick(src.stats_file, self.stats_file)
        self.statsd_server = _pick(src.statsd.server, self.statsd_server)
        self.statsd_prefix = _pick(src.statsd.prefix, self.statsd_prefix)
        self.user = _pick(src.user, self.user)
        self.group = _pick(src.group, self.group)
        self.hook = _pick(src.hook, self.hook)
        self.hooks = {**self.hooks, **src.hooks}
        self.metrics_listen = _pick(src.metrics_listen, self.metrics_listen)
        self.handshake_guard = GuardSection(**{**self.handshake_guard.given(), **src.handshake_guard.given()})

    def get_keepalive(self) -> int:
        """Configured keepalive or max(peer_timeout/2 - 60, 1) (spec 13)."""
        if self.keepalive is not None:
            return self.keepalive
        return max(self.peer_timeout // 2 - 60, 1)

    def validate(self) -> None:
        """Check everything that can be checked before a device or socket exists."""
        if self.device_type not in DEVICE_TYPES:
            raise ConfigError(f"invalid device type {self.device_type!r}")
        if self.mode not in MODES:
            raise ConfigError(f"invalid mode {self.mode!r}")
        if len(self.device_name.replace("%d", "0").encode()) >= 16:
            raise ConfigError(f"Device name {self.device_name!r} is too long (at most 15 bytes)")
        if not self.listen.strip().startswith("ws://"):  # ws:// = through the proxy (spec 16.3)
            parse_listen_addr(self.listen)
        for claim in self.claims:
            parse_claim(claim)
        for adv in self.advertise_addresses:
            parse_advertise(adv, 0)
        if self.ip is not None:
            parse_ip(self.ip)
        for event in self.hooks:
            if event not in HOOK_EVENTS:
                raise ConfigError(f"unknown hook event {event!r} (known: {', '.join(HOOK_EVENTS)})")
        if self.statsd_prefix is not None and self.statsd_server is None:
            raise ConfigError("statsd prefix given without a statsd server")
        for name in self.crypto.algorithms:
            _parse_algorithm(name)
        if self.metrics_listen:
            parse_metrics_listen(self.metrics_listen)
        build_guard_config(self)


def _pick(new: Any, old: Any) -> Any:
    return old if new is None else new


def parse_listen_addr(text: str) -> SocketAddr:
    """The UDP socket's bind address (spec 3.4)."""
    try:
        return parse_listen(text, DEFAULT_PORT)
    except DecodeError as exc:
        raise ConfigError(str(exc)) from None


def parse_metrics_listen(text: str) -> tuple[str, int]:
    """``[HOST]:PORT`` or ``PORT`` of the metrics endpoint -> (host, port); no host = 127.0.0.1.

    Unlike the VPN socket, the default is loopback: metrics say who talks to whom, and exposing them
    must be a decision (``0.0.0.0:9100``, ``[::]:9100``).
    """
    raw = text.strip()
    host, sep, port = raw.rpartition(":")
    if not sep:
        host, port = "", raw
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"invalid metrics address {text!r}: expected [IP]:PORT or PORT") from None
    if not 0 < number < 65536:
        raise ConfigError(f"invalid metrics address {text!r}: port out of range")
    return host, number


def parse_claim(text: str) -> Range:
    """A claim ``ADDR/PREFIX`` (prefix mandatory)."""
    try:
        return Range.parse(text)
    except DecodeError as exc:
        raise ConfigError(f"invalid claim {text!r}: {exc}") from None


def parse_advertise(text: str, default_port: int) -> SocketAddr:
    """An advertised address, default port = the socket's port; IPv4 stays plain (spec 10.5)."""
    try:
        addr = parse_listen(text, default_port)
    except DecodeError as exc:
        raise ConfigError(f"invalid advertise address {text!r}: {exc}") from None
    return addr


def parse_ip(text: str) -> tuple[str, int]:
    """``A.B.C.D[/LEN]`` -> (address, prefix length); prefix default 24, IPv4 only (spec 12 step 4)."""
    addr, _, prefix = text.strip().partition("/")
    try:
        ip = ipaddress.IPv4Address(addr)
        plen = int(prefix) if prefix else 24
    except ValueError:
        raise ConfigError(f"invalid ip {text!r} (expected A.B.C.D[/LEN])") from None
    if not 0 <= plen <= 32:
        raise ConfigError(f"invalid prefix length in ip {text!r} (must be <= 32)")
    return str(ip), plen


def _parse_algorithm(name: str) -> Any:
    from vpncloud.core.primitives import parse_algorithm

    try:
        return parse_algorithm(name)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(f"Unknown crypto method: {name!r} ({exc})") from None


# --- command line (spec 14.3) ---------------------------------------------------------------------


def _split_list(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for value in values or []:
        out.extend(part.strip() for part in value.split(",") if part.strip())
    return out


def _u32(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not 0 <= value < 1 << 32:
        raise argparse.ArgumentTypeError(f"out of range: {text!r}")
    return value


_CLI_ALGOS = ("plain", "aes128", "aes256", "chacha20")


def _cli_algos(text: str) -> str:
    for part in text.split(","):
        if part.strip().lower() not in _CLI_ALGOS:
            raise argparse.ArgumentTypeError(
                f"invalid algorithm {part.strip()!r} (choose from {', '.join(_CLI_ALGOS)})"
            )
    return text


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The main invocation's flags, exactly as the original 2.4 (spec 14.3), plus ours at the end."""
    p.add_argument("--config", metavar="FILE", help="Read configuration options from the specified file.")
    p.add_argument(
        "-t", "--type", dest="type", choices=DEVICE_TYPES, type=str.lower, help="Set the type of network"
    )
    p.add_argument("-d", "--device", metavar="NAME", help="Name of the virtual device")
    p.add_argument("--device-path", metavar="PATH", help="Path of the tun device")
    p.add_argument(
        "--fix-rp-filter", action="store_true", default=None, help="Fix the rp_filter settings on the host"
    )
    p.add_argument("-m", "--mode", choices=MODES, type=str.lower, help="Mode to run in")
    p.add_argument(
        "-p", "--password", metavar="PASSWORD", default=os.environ.get("PASSWORD"), help="The shared password"
    )
    p.add_argument(
        "--private-key",
        "--key",
        dest="private_key",
        metavar="PRIVATE_KEY",
        default=os.environ.get("PRIVATE_KEY"),
        help="The private key to use",
    )
    p.add_argument("--public-key", metavar="PUBLIC_KEY", help="The public key to use")
    p.add_argument(
        "--trusted-key",
        "--trust",
        dest="trusted_keys",
        action="append",
        metavar="KEY",
        help="Other public keys to trust",
    )
    p.add_argument(
        "--algorithm",
        "--algo",
        dest="algorithms",
        action="append",
        type=_cli_algos,
        metavar="ALGO",
        help="Algorithms to allow (plain, aes128, aes256, chacha20)",
    )
    p.add_argument(
        "--claim", dest="claims", action="append", metavar="CLAIM", help="The local subnets to claim"
    )
    p.add_argument("--no-auto-claim", action="store_true", help="Do not automatically claim the device ip")
    p.add_argument("-l", "--listen", metavar="LISTEN", help="The port number (or ip:port) on which to listen")
    p.add_argument(
        "-c",
        "--peer",
        "--connect",
        dest="peers",
        action="append",
        metavar="ADDR",
        help="Address of a peer to connect to",
    )
    p.add_argument("--peer-timeout", type=_u32, metavar="SECS", help="Peer timeout in seconds")
    p.add_argument(
        "--keepalive", type=_u32, metavar="SECS", help="Periodically send message to keep connections alive"
    )
    p.add_argument(
        "--switch-timeout", type=_u32, metavar="SECS", help="Switch table entry timeout in seconds"
    )
    p.add_argument("--beacon-store", metavar="PATH|COMMAND", help="The path or command to store the beacon")
    p.add_argument("--beacon-load", metavar="PATH|COMMAND", help="The path or command to load the beacon")
    p.add_argument(
        "--beacon-interval", type=_u32, metavar="SECS", help="Beacon store/load interval in seconds"
    )
    p.add_argument("--beacon-password", metavar="PASSWORD", help="Password to encrypt the beacon with")
    p.add_argument("--ip", metavar="IP", help="An IP address (plus optional prefix length) for the interface")
    p.add_argument(
        "--advertise_addresses",
        dest="advertise_addresses",
        action="append",
        metavar="ADDR",
        help="A list of IP Addresses to advertise as our external address(s)",
    )
    p.add_argument("--ifup", metavar="COMMAND", help="A command to setup the network interface")
    p.add_argument("--ifdown", metavar="COMMAND", help="A command to bring down the network interface")
    p.add_argument("--no-port-forwarding", action="store_true", help="Disable automatic port forwarding")
    p.add_argument("--daemon", action="store_true", help="Run the process in the background")
    p.add_argument("--pid-file", metavar="FILE", help="Store the process id in this file when daemonizing")
    p.add_argument("--stats-file", metavar="FILE", help="Print statistics to this file")
    p.add_argument("--statsd-server", metavar="HOST:PORT", help="Send statistics to this statsd server")
    p.add_argument("--statsd-prefix", metavar="PREFIX", help="Use the given prefix for statsd records")
    p.add_argument("--user", metavar="USER", help="Run as other user")
    p.add_argument("--group", metavar="GROUP", help="Run as other group")
    p.add_argument("--log-file", metavar="FILE", help="Print logs also to this file")
    p.add_argument(
        "--hook",
        dest="hooks",
        action="append",
        metavar="[EVENT:]SCRIPT",
        help="Call script on event (EVENT:SCRIPT)",
    )
    # ours
    p.add_argument(
        "--control-socket",
        metavar="PATH",
        help="Control socket for `vpncloud status` (default /run/vpncloud/IFNAME.sock)",
    )
    p.add_argument("--no-routes", action="store_true", help="Do not program kernel routes for remote claims")
    p.add_argument(
        "--metrics-listen",
        metavar="[ADDR]:PORT",
        help="Serve Prometheus metrics over HTTP on this address (off by default); a port alone or "
        "':PORT' means 127.0.0.1:PORT, e.g. 9100; use 0.0.0.0:PORT to expose them",
    )
    p.add_argument(
        "--security-file",
        metavar="FILE",
        help="ACL and key expiry written by `vpncloud apply` (default: NAME.security.yaml beside "
        "--config, if it exists)",
    )
    p.add_argument(
        "--stats-interval",
        type=_u32,
        metavar="SECS",
        help="Seconds between stats file/statsd outputs (default 60, the original's fixed value)",
    )


def add_verbosity(p: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """-v/-q (mutually exclusive, like the original)."""
    group = p.add_mutually_exclusive_group()
    default = argparse.SUPPRESS if suppress else False
    group.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="Print debug information"
    )
    group.add_argument(
        "-q", "--quiet", action="store_true", default=default, help="Only print errors and warnings"
    )


def build_arg_parser(prog: str = "vpncloud") -> argparse.ArgumentParser:
    """Parser of the main invocation (no subcommand)."""
    p = argparse.ArgumentParser(prog=prog, description="Peer-to-peer VPN")
    add_verbosity(p)
    add_run_arguments(p)
    p.add_argument("--version", action="version", version=VERSION_TEXT, help="Print the version and exit")
    return p


def overlay_from_args(ns: argparse.Namespace) -> ConfigFile:
    """The command line as one config source (spec 14.3 mapping)."""
    hooks: dict[str, str] = {}
    hook: str | None = None
    for item in ns.hooks or []:
        # spec 14.3 / quirk 18: split at the *first* colon; without one it is the global hook.
        if ":" in item:
            event, _, script = item.partition(":")
            hooks[event] = script
        else:
            hook = item
    algorithms = _split_list(ns.algorithms)
    return ConfigFile(
        device=DeviceSection(
            type=ns.type, name=ns.device, path=ns.device_path, fix_rp_filter=ns.fix_rp_filter
        ),
        ip=ns.ip,
        advertise_addresses=_split_list(ns.advertise_addresses),
        ifup=ns.ifup,
        ifdown=ns.ifdown,
        crypto=CryptoSection(
            password=ns.password,
            private_key=ns.private_key,
            public_key=ns.public_key,
            trusted_keys=_split_list(ns.trusted_keys),
            algorithms=algorithms,
        ),
        listen=ns.listen,
        peers=list(ns.peers or []),
        peer_timeout=ns.peer_timeout,
        keepalive=ns.keepalive,
        beacon=BeaconSection(
            store=ns.beacon_store,
            load=ns.beacon_load,
            interval=ns.beacon_interval,
            password=ns.beacon_password,
        ),
        mode=ns.mode,
        switch_timeout=ns.switch_timeout,
        claims=_split_list(ns.claims),
        auto_claim=False if ns.no_auto_claim else None,
        port_forwarding=False if ns.no_port_forwarding else None,
        pid_file=ns.pid_file,
        stats_file=ns.stats_file,
        statsd=StatsdSection(server=ns.statsd_server, prefix=ns.statsd_prefix),
        metrics_listen=getattr(ns, "metrics_listen", None),
        user=ns.user,
        group=ns.group,
        hook=hook,
        hooks=hooks,
    )


def check_arg_conflicts(ns: argparse.Namespace, argv: Sequence[str]) -> None:
    """clap's ``conflicts_with``/``requires`` of the original."""
    given = set(argv)
    if {"-p", "--password"} & given and {"--private-key", "--key"} & given:
        raise ConfigError("The argument '--password' cannot be used with '--private-key'")
    if ns.statsd_prefix is not None and ns.statsd_server is None:
        raise ConfigError("The argument '--statsd-prefix' requires '--statsd-server'")


def config_from_args(ns: argparse.Namespace, warn: Callable[[str], None] | None = None) -> Config:
    """Defaults, then ``--config FILE``, then the flags (spec 14.1)."""
    config = Config()
    if ns.config:
        config.merge(load_config_file(ns.config, warn=warn))
        config.config_path = ns.config
    config.merge(overlay_from_args(ns))
    config.daemonize = bool(ns.daemon)
    config.log_file = ns.log_file
    config.verbose = bool(getattr(ns, "verbose", False))
    config.quiet = bool(getattr(ns, "quiet", False))
    config.control_socket = ns.control_socket
    config.security_file = ns.security_file
    config.routes = not ns.no_routes
    if ns.stats_interval is not None:
        config.stats_interval = ns.stats_interval
    return config


# --- building the core's configuration ------------------------------------------------------------


def build_node_config(config: Config, *, port: int, auto_claim_ip: str | None = None) -> NodeConfig:
    """NodeConfig from the merged config. ``auto_claim_ip``: the TUN's IPv4 address found after setup."""
    from vpncloud.core.node import NodeConfig

    claims = [parse_claim(c) for c in config.claims]
    if config.auto_claim and config.device_type == "tun" and auto_claim_ip:
        claims.append(Range(ipaddress.IPv4Address(auto_claim_ip).packed, 32))
    return NodeConfig(
        device_type=DeviceType(config.device_type),
        mode=Mode(config.mode),
        port=port,
        peer_timeout=config.peer_timeout,
        keepalive=config.keepalive,
        switch_timeout=config.switch_timeout,
        claims=claims,
        advertise_addresses=[parse_advertise(a, port) for a in config.advertise_addresses],
        beacon_interval=config.beacon_interval,
        beacon_password=config.beacon_password or "",
        beacon_store=config.beacon_store is not None,
        beacon_load=config.beacon_load is not None,
        stats_interval=config.stats_interval,
        statsd_prefix=(config.statsd_prefix or "vpncloud") if config.statsd_server else None,
        guard=build_guard_config(config),
    )


def build_guard_config(config: Config) -> GuardConfig:
    """The guard's limits: the defaults, overridden by the ``handshake-guard:`` keys given."""
    from vpncloud.core.guard import GuardConfig, guard_limit_problem

    given = config.handshake_guard.given()
    for name, value in given.items():
        problem = guard_limit_problem(name, value)
        if problem:
            raise ConfigError(f"handshake-guard.{name.replace('_', '-')}: {problem}")
    try:
        return GuardConfig(**given)
    except ValueError as exc:
        raise ConfigError(f"handshake-guard: {exc}") from None


def algorithm_choice(config: Config) -> tuple[list[Any], bool]:
    """(encrypted algorithms in configured order, plain allowed) (spec 7.5)."""
    from vpncloud.core.primitives import DEFAULT_ALGORITHMS, Algorithm

    if not config.crypto.algorithms:
        return list(DEFAULT_ALGORITHMS), False
    algos: list[Any] = []
    plain = False
    for name in config.crypto.algorithms:
        alg = _parse_algorithm(name)
        if alg == Algorithm.PLAIN:
            plain = True
        elif alg not in algos:
            algos.append(alg)
    return algos, plain


def build_identity(config: Config) -> Any:
    """The identity, failing cleanly on every key problem the original panics on (quirk 23)."""
    from vpncloud.core.identity import Identity

    c = config.crypto
    if c.password is None and c.private_key is None:
        raise ConfigError("Either password or private key must be set in config or given as parameter")
    try:
        return Identity.from_config(
            password=c.password,
            private_key=c.private_key,
            public_key=c.public_key,
            trusted_keys=tuple(c.trusted_keys),
        )
    except (ConfigError, DecodeError, ValueError) as exc:
        # the message must not echo the key text itself: only say what is wrong with it.
        raise ConfigError(f"Invalid key configuration: {exc}") from None


def build_crypto_config(
    config: Config,
    *,
    speeds: dict[Any, float] | None = None,
    identity: Any | None = None,
    duration: float = 0.1,
) -> CryptoConfig:
    """CryptoConfig: identity + algorithms with measured speeds (spec 23.2)."""
    from vpncloud.core.peer_crypto import CryptoConfig

    ident = identity if identity is not None else build_identity(config)
    algos, plain = algorithm_choice(config)
    if speeds is None:
        from vpncloud.crypto_speed import measure_speeds

        speeds = measure_speeds(algos, duration=duration) if algos else {}
    return CryptoConfig(
        identity=ident, algorithms=[(a, float(speeds.get(a, 0.0))) for a in algos], plain_allowed=plain
    )
