"""The original's config file, command line and merge rules (spec 14, test vectors 14.2 and 22.10)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from vpncloud import config as cfgmod
from vpncloud.config import (
    Config,
    ConfigError,
    build_arg_parser,
    build_crypto_config,
    build_node_config,
    config_from_args,
    load_config_file,
    load_config_text,
    migrate_config_file,
    overlay_from_args,
)
from vpncloud.core import base62
from vpncloud.core.primitives import Algorithm
from vpncloud.core.types import DeviceType, Mode, Range

ASSETS = Path(cfgmod.__file__).parent / "assets"

SPEC_14_2 = """
device:
  type: tun
  name: vpncloud%d
  path: /dev/net/tun
ip: 10.0.1.1/16
advertise-addresses:
  - 192.168.0.1
  - 192.168.1.1
ifup: ifconfig $IFNAME 10.0.1.1/16 mtu 1400 up
ifdown: 'true'
peers:
  - remote.machine.foo:3210
  - remote.machine.bar:3210
peer-timeout: 600
keepalive: 840
switch-timeout: 300
beacon:
  store: /run/vpncloud.beacon.out
  load: /run/vpncloud.beacon.in
  interval: 3600
  password: test123
mode: normal
claims:
  - 10.0.1.0/24
port-forwarding: true
user: nobody
group: nogroup
pid-file: /run/vpncloud.run
stats-file: /var/log/vpncloud.stats
statsd:
  server: example.com:1234
  prefix: prefix
"""


def parse_args(*argv: str) -> object:
    return build_arg_parser().parse_args(list(argv))


def test_spec_14_2_file_parses_with_every_field() -> None:
    f = load_config_text(SPEC_14_2)
    assert (f.device.type, f.device.name, f.device.path, f.device.fix_rp_filter) == (
        "tun",
        "vpncloud%d",
        "/dev/net/tun",
        None,
    )
    assert f.ip == "10.0.1.1/16"
    assert f.advertise_addresses == ["192.168.0.1", "192.168.1.1"]
    assert f.ifup == "ifconfig $IFNAME 10.0.1.1/16 mtu 1400 up"
    assert f.ifdown == "true"
    assert f.peers == ["remote.machine.foo:3210", "remote.machine.bar:3210"]
    assert (f.peer_timeout, f.keepalive, f.switch_timeout) == (600, 840, 300)
    assert (f.beacon.store, f.beacon.load, f.beacon.interval, f.beacon.password) == (
        "/run/vpncloud.beacon.out",
        "/run/vpncloud.beacon.in",
        3600,
        "test123",
    )
    assert f.mode == "normal"
    assert f.claims == ["10.0.1.0/24"]
    assert f.port_forwarding is True
    assert (f.user, f.group, f.pid_file, f.stats_file) == (
        "nobody",
        "nogroup",
        "/run/vpncloud.run",
        "/var/log/vpncloud.stats",
    )
    assert (f.statsd.server, f.statsd.prefix) == ("example.com:1234", "prefix")
    # the rest stays unset
    assert f.listen is None and f.auto_claim is None and f.hook is None and f.hooks == {}
    assert f.crypto.password is None and f.crypto.trusted_keys == [] and f.crypto.algorithms == []


def test_shipped_example_parses() -> None:
    f = load_config_text((ASSETS / "example.net.disabled").read_text())
    assert f.listen == "3210"  # a number where a string is expected
    assert f.peers == ["node2.example.com:3210", "node3.example.com:3210"]
    assert f.device.type == "tun" and f.device.fix_rp_filter is False
    assert f.auto_claim is True and f.claims == [] and f.hooks == {}


def test_spec_22_10_merge_file_then_args(tmp_path: Path) -> None:
    path = tmp_path / "net.net"
    path.write_text(SPEC_14_2)
    ns = parse_args(
        "--config",
        str(path),
        "-c",
        "another:3210",
        "-l",
        "[::]:3211",
        "--peer-timeout",
        "1801",
        "--keepalive",
        "850",
        "--switch-timeout",
        "301",
        "--no-port-forwarding",
        "--daemon",
        "-p",
        "pw",
    )
    c = config_from_args(ns)  # type: ignore[arg-type]
    assert c.peers == ["remote.machine.foo:3210", "remote.machine.bar:3210", "another:3210"]
    assert c.claims == ["10.0.1.0/24"]
    assert c.listen == "[::]:3211"
    assert (c.peer_timeout, c.keepalive, c.switch_timeout) == (1801, 850, 301)
    assert c.port_forwarding is False
    assert c.daemonize is True
    # untouched file values survive
    assert c.ip == "10.0.1.1/16" and c.beacon_password == "test123" and c.statsd_prefix == "prefix"


def test_merge_rules_lists_concatenate_algorithms_replace_hooks_per_event() -> None:
    c = Config()
    c.merge(
        load_config_text(
            "crypto: {trusted-keys: [A], algorithms: [aes128]}\n"
            "hooks: {peer_connected: one, vpn_started: two}\nadvertise-addresses: [1.2.3.4]\n"
        )
    )
    c.merge(load_config_text("crypto: {trusted-keys: [B], algorithms: []}\nhooks: {peer_connected: three}\n"))
    assert c.crypto.trusted_keys == ["A", "B"]
    assert c.crypto.algorithms == ["aes128"]  # an empty later list does not replace
    assert c.hooks == {"peer_connected": "three", "vpn_started": "two"}
    c.merge(load_config_text("crypto: {algorithms: [chacha20]}\n"))
    assert c.crypto.algorithms == ["chacha20"]
    assert c.advertise_addresses == ["1.2.3.4"]


def test_defaults() -> None:
    c = Config()
    assert (c.device_type, c.device_name, c.listen, c.peer_timeout, c.switch_timeout) == (
        "tun",
        "vpncloud%d",
        "3210",
        300,
        300,
    )
    assert c.get_keepalive() == 90 and c.beacon_interval == 3600 and c.auto_claim and c.port_forwarding


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("peer_timeout: 10\n", "unknown key 'peer_timeout'"),
        ("device: {typo: tun}\n", "unknown key 'device.typo'"),
        ("crypto: {pasword: x}\n", "unknown key 'crypto.pasword'"),
        ("statsd: {host: x}\n", "unknown key 'statsd.host'"),
        ("beacon: {every: 1}\n", "unknown key 'beacon.every'"),
        ("mode: bridge\n", "mode"),
        ("device: {type: tunnel}\n", "device.type"),
        ("peer-timeout: ten\n", "peer-timeout"),
        ("peer-timeout: -1\n", "peer-timeout"),
        ("peers: 1.2.3.4\n", "peers: expected a list"),
        ("auto-claim: maybe\n", "auto-claim"),
        ("listen: 1\nlisten: 2\n", "duplicate key"),
        ("peers: [a\n", "invalid YAML"),
        ("- a\n- b\n", "expected a mapping"),
        ("ifdown: true\n", "quote it"),
    ],
)
def test_bad_files_give_one_clear_line(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config_text(text)
    message = str(exc.value)
    assert fragment in message
    assert "\n" not in message


def test_error_names_the_line() -> None:
    with pytest.raises(ConfigError, match="line 3"):
        load_config_text("listen: 3210\nmode: normal\nbogus: 1\n")


def test_string_scalars_keep_their_text() -> None:
    f = load_config_text("crypto: {password: 0123}\nlisten: 3210\nbeacon: {password: 1.50}\n")
    assert f.crypto.password == "0123"  # not the octal number 83
    assert f.listen == "3210"
    assert f.beacon.password == "1.50"


def test_empty_and_null_file() -> None:
    assert load_config_text("") == cfgmod.ConfigFile()
    assert load_config_text("~\n") == cfgmod.ConfigFile()


V1_FILE = """
device_type: tap
device-name: vpn%d
port: 3211
shared_key: geheim
magic: "0x1234"
crypto: aes256
peers: [1.2.3.4:3210]
peer_timeout: 1800
dst_timeout: 120
subnets: [10.0.0.0/24]
statsd_server: stats:8125
unknown_key: ignored
"""


def test_v1_fallback_and_conversion(tmp_path: Path) -> None:
    path = tmp_path / "old.net"
    path.write_text(V1_FILE)
    notes: list[str] = []
    f = load_config_file(str(path), warn=notes.append)
    assert f.device.type == "tap" and f.device.name == "vpn%d"
    assert f.listen == "3211"
    assert f.crypto.password == "geheim" and f.beacon.password == "geheim"
    assert f.crypto.algorithms == []
    assert f.peers == ["1.2.3.4:3210"] and f.peer_timeout == 1800
    assert f.switch_timeout == 120 and f.claims == ["10.0.0.0/24"]
    assert f.statsd.server == "stats:8125"
    assert any("migrate-config" in n for n in notes)
    assert any("magic" in n.lower() for n in notes)
    # without the fallback (the orchestrator's validator) the same text is an error
    with pytest.raises(ConfigError):
        load_config_text(V1_FILE)


def test_v1_without_shared_key_uses_none() -> None:
    f = load_config_text("port: 3210\n", allow_v1=True)
    assert f.crypto.password == "none" and f.listen == "3210"  # plain v2 too: listen is v2 key
    g = load_config_text("port: 3210\ndevice_type: tun\n", allow_v1=True)
    assert g.crypto.password == "none" and g.listen == "3210" and g.device.type == "tun"


def test_neither_v2_nor_v1() -> None:
    with pytest.raises(ConfigError, match="neither version 2 nor version 1"):
        load_config_text("crypto: {password: x}\nmode: bridge\n", allow_v1=True)


def test_migrate_config(tmp_path: Path) -> None:
    path = tmp_path / "old.net"
    path.write_text(V1_FILE)
    migrate_config_file(str(path))
    assert (tmp_path / "old.net.orig").read_text() == V1_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = path.read_text()
    assert "peer-timeout: 1800" in text and "pid-file: null" in text  # every field, unset ones null
    migrated = load_config_text(text)
    assert migrated.device.type == "tap" and migrated.claims == ["10.0.0.0/24"]


# --- command line ---------------------------------------------------------------------------------


def test_cli_flags_aliases_and_short_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PASSWORD", raising=False)
    monkeypatch.delenv("PRIVATE_KEY", raising=False)
    ns = parse_args(
        "-t", "tap", "-d", "vpn%d", "--device-path", "/dev/x", "--fix-rp-filter", "-m", "switch",
        "--key", "KEY", "--public-key", "PUB", "--trust", "A,B", "--trusted-key", "C",
        "--algo", "aes128,CHACHA20", "--algorithm", "plain", "--claim", "10.0.0.0/24,10.1.0.0/24",
        "--no-auto-claim", "-l", "3000", "-c", "p1", "--peer", "p2", "--connect", "p3",
        "--beacon-store", "|cat", "--beacon-load", "/b", "--beacon-interval", "60", "--beacon-password", "bp",
        "--ip", "10.0.0.1", "--advertise_addresses", "1.1.1.1,2.2.2.2", "--ifup", "up", "--ifdown", "down",
        "--pid-file", "/p", "--stats-file", "/s", "--statsd-server", "h:1", "--statsd-prefix", "x",
        "--user", "u", "--group", "g", "--log-file", "/l",
        "--hook", "peer_connected:echo a:b", "--hook", "echo global",
    )  # fmt: skip
    f = overlay_from_args(ns)  # type: ignore[arg-type]
    assert (f.device.type, f.device.name, f.device.path, f.device.fix_rp_filter) == (
        "tap",
        "vpn%d",
        "/dev/x",
        True,
    )
    assert f.mode == "switch"
    assert f.crypto.private_key == "KEY" and f.crypto.public_key == "PUB"
    assert f.crypto.trusted_keys == ["A", "B", "C"]
    assert f.crypto.algorithms == ["aes128", "CHACHA20", "plain"]
    assert f.claims == ["10.0.0.0/24", "10.1.0.0/24"] and f.auto_claim is False
    assert f.listen == "3000" and f.peers == ["p1", "p2", "p3"]
    assert (f.beacon.store, f.beacon.load, f.beacon.interval, f.beacon.password) == ("|cat", "/b", 60, "bp")
    assert f.ip == "10.0.0.1" and f.advertise_addresses == ["1.1.1.1", "2.2.2.2"]
    assert (f.ifup, f.ifdown, f.pid_file, f.stats_file) == ("up", "down", "/p", "/s")
    assert (f.statsd.server, f.statsd.prefix, f.user, f.group) == ("h:1", "x", "u", "g")
    # split at the FIRST colon; no colon -> global hook
    assert f.hooks == {"peer_connected": "echo a:b"} and f.hook == "echo global"


def test_cli_env_password_and_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PASSWORD", "from-env")
    monkeypatch.setenv("PRIVATE_KEY", "keyenv")
    f = overlay_from_args(parse_args())  # type: ignore[arg-type]
    assert f.crypto.password == "from-env" and f.crypto.private_key == "keyenv"


def test_cli_unset_flags_do_not_override_file() -> None:
    f = overlay_from_args(parse_args())  # type: ignore[arg-type]
    c = Config()
    c.merge(load_config_text("auto-claim: false\nport-forwarding: false\ndevice: {fix-rp-filter: true}\n"))
    c.merge(f)
    assert c.auto_claim is False and c.port_forwarding is False and c.fix_rp_filter is True


def test_cli_rejects_bad_algorithm_and_number(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args("--algo", "rot13")
    with pytest.raises(SystemExit):
        parse_args("--peer-timeout", "soon")
    assert "rot13" in capsys.readouterr().err


def test_cli_conflicts() -> None:
    ns = parse_args("-p", "a", "--private-key", "b")
    with pytest.raises(ConfigError, match="cannot be used"):
        cfgmod.check_arg_conflicts(ns, ["-p", "a", "--private-key", "b"])  # type: ignore[arg-type]
    ns = parse_args("--statsd-prefix", "x")
    with pytest.raises(ConfigError, match="requires"):
        cfgmod.check_arg_conflicts(ns, ["--statsd-prefix", "x"])  # type: ignore[arg-type]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args("--version")
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == "VpnCloud v2.4.0"


# --- building the core configuration -------------------------------------------------------------


def test_build_node_config() -> None:
    c = Config()
    c.merge(
        load_config_text(
            "mode: router\nclaims: [10.5.0.0/16]\nadvertise-addresses: [1.2.3.4, '5.6.7.8:99']\n"
            "statsd: {server: 'localhost:8125'}\nbeacon: {store: /x, password: bp}\npeer-timeout: 200\n"
        )
    )
    nc = build_node_config(c, port=4000, auto_claim_ip="10.9.0.1")
    assert nc.device_type is DeviceType.TUN and nc.mode is Mode.ROUTER and nc.port == 4000
    assert nc.claims == [Range.parse("10.5.0.0/16"), Range.parse("10.9.0.1/32")]
    assert nc.advertise_addresses == [("1.2.3.4", 4000), ("5.6.7.8", 99)]  # plain, not mapped
    assert nc.statsd_prefix == "vpncloud"
    assert nc.beacon_store is True and nc.beacon_load is False and nc.beacon_password == "bp"
    assert nc.peer_timeout == 200
    c.auto_claim = False
    assert build_node_config(c, port=1).claims == [Range.parse("10.5.0.0/16")]
    c.device_type = "tap"
    c.auto_claim = True
    assert Range.parse("10.9.0.1/32") not in build_node_config(c, port=1, auto_claim_ip="10.9.0.1").claims


def test_build_crypto_config_algorithms_and_speeds() -> None:
    c = Config()
    c.crypto.password = "test"
    cc = build_crypto_config(
        c, speeds={Algorithm.AES128: 1.0, Algorithm.AES256: 2.0, Algorithm.CHACHA20: 3.0}
    )
    assert [a for a, _ in cc.algorithms] == [Algorithm.AES128, Algorithm.AES256, Algorithm.CHACHA20]
    assert cc.plain_allowed is False
    c.crypto.algorithms = ["plain", "chacha20_poly1305"]
    cc = build_crypto_config(c, speeds={Algorithm.CHACHA20: 5.0})
    assert cc.algorithms == [(Algorithm.CHACHA20, 5.0)] and cc.plain_allowed is True
    # the real benchmark (crypto_speed.measure_speeds) gives positive speeds
    c.crypto.algorithms = ["aes128"]
    cc = build_crypto_config(c, duration=0.01)
    assert cc.algorithms[0][0] is Algorithm.AES128 and cc.algorithms[0][1] > 0


def test_identity_errors_are_clean_and_secret_free() -> None:
    c = Config()
    with pytest.raises(ConfigError, match="Either password or private key"):
        cfgmod.build_identity(c)
    # genkey -p test: a consistent pair
    private = "OcNT14Czd82FN9R7Bms8WW0ZX50TO7SoA99yGK2Rmyz"
    c.crypto.private_key = private
    c.crypto.public_key = "WyT2TWsbgHV4PIHPXUpSuK42aIJwibhrfTihs9x6fA3"  # test123's public key: mismatch
    with pytest.raises(ConfigError) as exc:
        cfgmod.build_identity(c)
    assert private not in str(exc.value)
    c.crypto.public_key = "PQGYPnaB8PV2qWtxGtN9wibSKzYbSwbQh1s9b5syjch"
    assert cfgmod.build_identity(c).public_key == base62.decode("PQGYPnaB8PV2qWtxGtN9wibSKzYbSwbQh1s9b5syjch")
    c.crypto.trusted_keys = ["abc"]  # too short even when padded? no: padded to 32 bytes is accepted
    c.crypto.trusted_keys = ["not base62 !"]
    with pytest.raises(ConfigError):
        cfgmod.build_identity(c)


def test_leading_zero_private_key_is_accepted() -> None:
    # the original panics on a seed starting with 0x00 (quirk 23); we accept its short text form
    seed = b"\x00" + bytes(range(1, 32))
    c = Config()
    c.crypto.private_key = base62.encode(seed)
    assert cfgmod.build_identity(c).seed == seed


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("claims", ["10.0.0.0"], "claim"),
        ("ip", "10.0.0.1/33", "prefix"),
        ("ip", "fe80::1", "ip"),
        ("listen", "nonsense:port:x", "listen"),
        ("device_name", "a-very-long-device-name%d", "too long"),
        ("hooks", {"peer_exploded": "x"}, "unknown hook event"),
    ],
)
def test_validate(field: str, value: object, fragment: str) -> None:
    c = Config()
    setattr(c, field, value)
    with pytest.raises(ConfigError, match=fragment):
        c.validate()


def test_secrets_not_in_repr() -> None:
    f = load_config_text("crypto: {password: hunter2, private-key: SECRETKEY}\nbeacon: {password: bpw}\n")
    c = Config()
    c.merge(f)
    for text in (repr(f), repr(c)):
        assert "hunter2" not in text and "SECRETKEY" not in text and "bpw" not in text


#: A file of nothing but unknown keys (a small YAML bomb of anchors), as a corrupted file could be.
UNKNOWN_ONLY = "lol1: &a [lol, lol]\nlol2: &b [*a, *a, *a]\nlol3: [*b, *b, *b]\n"


def test_a_file_without_any_known_key_is_no_version_1_file() -> None:
    # The original takes it as version 1 and runs with the password "none": anyone could join.
    with pytest.raises(ConfigError, match=r"version 1: no known config key \(unknown: lol1, lol2, lol3\)"):
        load_config_text(UNKNOWN_ONLY, allow_v1=True)
    with pytest.raises(ConfigError, match="no known config key"):
        load_config_text("typo-in-every-key: 1\n", allow_v1=True)


def test_migrate_refuses_a_file_without_any_known_key(tmp_path: Path) -> None:
    path = tmp_path / "broken.net"
    path.write_text(UNKNOWN_ONLY)
    with pytest.raises(ConfigError, match="no known config key"):
        migrate_config_file(str(path))
    assert path.read_text() == UNKNOWN_ONLY and not (tmp_path / "broken.net.orig").exists()


def test_the_daemon_does_not_start_from_a_file_without_any_known_key(tmp_path: Path) -> None:
    path = tmp_path / "broken.net"
    path.write_text(UNKNOWN_ONLY)
    proc = subprocess.run(
        [sys.executable, "-m", "vpncloud", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "no known config key" in out, out
    assert 'using password "none"' not in out


# --- handshake-guard: the flood guard's limits (ours, issue 24) ---------------------------------


def test_handshake_guard_keys_reach_the_core() -> None:
    from vpncloud.core.guard import GuardConfig

    c = Config()
    c.merge(
        load_config_text(
            "listen: 3210\nhandshake-guard:\n  per-source-rate: 2.5\n  per-source-burst: 5\n"
            "  per-host-new-rate: 1\n  per-host-new-burst: 2\n  global-rate: 50\n  global-burst: 100\n"
            "  max-sources: 64\n  amplification-budget: false\n  budget-ttl: 30\n"
            "  max-pending-per-host: 1\n  max-pending: 16\n  replay-ttl: 600\n  drop-log-interval: 60\n"
        )
    )
    c.validate()
    assert build_node_config(c, port=1).guard == GuardConfig(
        per_source_rate=2.5,
        per_source_burst=5.0,
        per_host_new_rate=1.0,
        per_host_new_burst=2.0,
        global_rate=50.0,
        global_burst=100.0,
        max_sources=64,
        amplification_budget=False,
        budget_ttl=30.0,
        max_pending_per_host=1,
        max_pending=16,
        replay_ttl=600.0,
        drop_log_interval=60.0,
    )


def test_without_handshake_guard_the_defaults_hold_and_nothing_is_written() -> None:
    from vpncloud.core.guard import GuardConfig

    c = Config()
    f = load_config_text("listen: 3210\n")
    c.merge(f)
    assert build_node_config(c, port=1).guard == GuardConfig()
    assert "handshake-guard" not in f.to_yaml()  # migrate-config output stays the original's


def test_handshake_guard_merges_key_by_key() -> None:
    c = Config()
    c.merge(load_config_text("handshake-guard: {max-pending: 9, global-rate: 7}\n"))
    c.merge(load_config_text("handshake-guard: {global-rate: 8}\n"))
    g = build_node_config(c, port=1).guard
    assert (g.max_pending, g.global_rate) == (9, 8.0)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("handshake-guard: {max-pending: 0}\n", "handshake-guard.max-pending: must be at least 1"),
        ("handshake-guard: {max-pending-per-host: -1}\n", "handshake-guard.max-pending-per-host"),
        ("handshake-guard: {max-sources: 2.5}\n", "handshake-guard.max-sources: expected an unsigned"),
        ("handshake-guard: {global-rate: 0}\n", "handshake-guard.global-rate: 0 is not a positive number"),
        ("handshake-guard: {per-source-rate: -3}\n", "handshake-guard.per-source-rate"),
        ("handshake-guard: {replay-ttl: .inf}\n", "handshake-guard.replay-ttl"),
        ("handshake-guard: {budget-ttl: .nan}\n", "handshake-guard.budget-ttl"),
        ("handshake-guard: {global-rate: fast}\n", "handshake-guard.global-rate: expected a positive number"),
        ("handshake-guard: {amplification-budget: 1}\n", "handshake-guard.amplification-budget"),
        ("handshake-guard: {max_pending: 1}\n", "did you mean 'max-pending'"),
        ("handshake-guard: {pending: 1}\n", "unknown key 'handshake-guard.pending'"),
        ("handshake-guard: 5\n", "handshake-guard: expected a mapping"),
    ],
)
def test_bad_handshake_guard_values_name_the_key(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config_text(text)
    assert fragment in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("key", ["per-source-burst", "per-host-new-burst", "global-burst"])
def test_a_burst_below_one_message_is_refused_by_validate(key: str) -> None:
    c = Config()
    c.merge(load_config_text(f"handshake-guard: {{{key}: 0.5}}\n"))
    with pytest.raises(ConfigError, match=f"handshake-guard.{key}: must be at least 1"):
        c.validate()


def test_the_daemon_refuses_a_bad_guard_value_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("crypto: {password: x}\nhandshake-guard: {max-pending: 0}\n")
    r = subprocess.run(
        [sys.executable, "-m", "vpncloud", "--config", str(path), "--no-port-forwarding"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0
    assert "handshake-guard.max-pending: must be at least 1" in r.stdout + r.stderr
