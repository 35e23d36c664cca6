"""``vpncloud config``: the interactive wizard, scripted through its Prompter and on a real pty."""

from __future__ import annotations

import fcntl
import os
import select
import stat
import subprocess
import sys
import termios
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from vpncloud.cli import build_parser
from vpncloud.config import ConfigError, ConfigFile, load_config_file
from vpncloud.core import base62
from vpncloud.core.identity import Identity
from vpncloud.daemon.completion import completion_script
from vpncloud.wizard import Prompter, Wizard, WizardAbort, configure, write_config

# genkey -p test (spec 22.3)
TEST_PRIVATE = "OcNT14Czd82FN9R7Bms8WW0ZX50TO7SoA99yGK2Rmyz"
PASSWORD = "s3cr3t-Pa55"


class Script:
    """Answers in order; each comes with a fragment its prompt must contain, so a drift fails loudly."""

    def __init__(self, steps: Sequence[tuple[str, str]]) -> None:
        self.steps = list(steps)
        self.lines: list[str] = []
        self.context: list[str] = []

    def read(self, prompt: str) -> str:
        self.lines.append(prompt)
        # a menu's question is written before its "Choice" prompt, so match both
        context, self.context = "\n".join([*self.context, prompt]), []
        if not self.steps:
            raise EOFError
        fragment, answer = self.steps.pop(0)
        assert fragment in context, f"expected a prompt with {fragment!r}, got {context!r}"
        return answer

    def write(self, line: str) -> None:
        self.lines.append(line)
        self.context.append(line)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def prompter(self) -> Prompter:
        return Prompter(self.read, self.write, self.read)


def run_wizard(
    tmp_path: Path, steps: Sequence[tuple[str, str]], name: str | None = "net"
) -> tuple[Script, str]:
    script = Script(steps)
    path = configure(name, str(tmp_path), script.prompter())
    assert script.steps == [], "not every scripted answer was asked for"
    return script, path


SIMPLE = [
    ("Choice", "1"),
    ("Peer addresses", "1.2.3.4:3210, node2.example.com:3210"),
    ("Password", PASSWORD),
    ("Confirm password", PASSWORD),
    ("Virtual IP", "10.0.0.1/24"),
    ("Finish configuration?", "y"),
]


def test_simple_creates_a_0600_file_with_every_key(tmp_path: Path) -> None:
    script, path = run_wizard(tmp_path, SIMPLE)
    assert path == str(tmp_path / "net.net")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    cfg = load_config_file(path)
    assert cfg.peers == ["1.2.3.4:3210", "node2.example.com:3210"]
    assert cfg.crypto.password == PASSWORD
    assert cfg.crypto.private_key is None and cfg.crypto.trusted_keys == []
    assert cfg.ip == "10.0.0.1/24"
    text = Path(path).read_text()
    assert "pid-file: null" in text and "statsd:\n  server: null" in text and "hooks: {}" in text
    assert set(yaml.safe_load(text)) == set(yaml.safe_load(ConfigFile().to_yaml()))
    assert PASSWORD not in script.output
    assert "sudo service vpncloud@net start" in script.output
    assert "sudo systemctl enable vpncloud@net" in script.output
    assert "sudo systemctl disable vpncloud@net" in script.output
    # nothing else left in the directory (the temp file was renamed)
    assert os.listdir(tmp_path) == ["net.net"]


def test_advanced_key_pair_and_tap_device(tmp_path: Path) -> None:
    (tmp_path / "net.net").write_text("claims: [10.9.0.0/16]\nmode: hub\n")
    os.chmod(tmp_path / "net.net", 0o644)
    script, path = run_wizard(
        tmp_path,
        [
            ("Choice", "2"),
            ("Listen address", "0.0.0.0:4000"),
            ("Peer addresses", "peer1:4000"),
            ("port forwarding", "n"),
            ("Authentication method", "2"),
            ("Choice", "1"),  # generate a new key pair
            ("Trusted public keys", ""),  # default: the own key
            ("Device type", "2"),
            ("Virtual IP", "10.1.0.1"),
            ("Statistics file", "/var/log/net.stats"),
            ("Finish configuration?", ""),
        ],
    )
    cfg = load_config_file(path)
    assert cfg.listen == "0.0.0.0:4000" and cfg.peers == ["peer1:4000"]
    assert cfg.port_forwarding is False
    assert cfg.device.type == "tap" and cfg.claims == [] and cfg.mode == "hub"
    assert cfg.crypto.password is None and cfg.crypto.private_key and cfg.crypto.public_key
    ident = Identity.from_config(private_key=cfg.crypto.private_key, public_key=cfg.crypto.public_key)
    assert cfg.crypto.trusted_keys == [cfg.crypto.public_key]
    assert base62.encode(ident.public_key) == cfg.crypto.public_key
    assert cfg.stats_file == "/var/log/net.stats"
    assert cfg.crypto.private_key not in script.output
    assert cfg.crypto.public_key in script.output
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_expert_asks_every_section(tmp_path: Path) -> None:
    other = base62.encode(Identity.from_config(password="other").public_key)
    script, path = run_wizard(
        tmp_path,
        [
            ("Choice", "3"),
            ("Listen address", "3211"),
            ("Peer addresses", "a:1,b:2"),
            ("port forwarding", "y"),
            ("advertise", "192.168.0.1, 192.168.1.1:5000"),
            ("Peer timeout", "600"),
            ("Keepalive", "0"),
            ("Authentication method", "2"),
            ("Choice", "2"),  # enter a private key
            ("Private key", TEST_PRIVATE),
            ("Trusted public keys", other),
            ("Numbers", "1,4"),
            ("Device type", "1"),
            ("Device name", "vpn%d"),
            ("Device path", ""),
            ("rp_filter", "y"),
            ("Forwarding mode", "3"),  # switch
            ("Switch table timeout", "120"),
            ("Virtual IP", "10.2.0.1/16"),
            ("claim the virtual IP", "n"),
            ("Additional claimed networks", "10.3.0.0/24, 10.4.0.0/24"),
            ("ifup", "ip link set up"),
            ("ifdown", "true"),
            ("Store beacons", "2"),
            ("File path", "/run/beacon.txt"),
            ("Load beacons", "3"),
            ("Command", "curl -s http://example.com/beacon"),
            ("Beacon interval", "60"),
            ("Beacon password", "beaconpw"),
            ("Statistics file", ""),
            ("Statsd server", "stats.example.com:8125"),
            ("Statsd prefix", "vpn"),
            ("user", "nobody"),
            ("group", "nogroup"),
            ("PID file", "/run/net.pid"),
            ("Global hook", "logger hook"),
            ("device_setup", ""),
            ("device_configured", ""),
            ("vpn_started", "echo started"),
            ("vpn_shutdown", ""),
            ("peer_connecting", ""),
            ("peer_connected", "echo $PEER"),
            ("peer_disconnected", ""),
            ("Finish configuration?", "yes"),
        ],
    )
    cfg = load_config_file(path)
    assert cfg.listen == "3211" and cfg.peers == ["a:1", "b:2"] and cfg.port_forwarding is True
    assert cfg.advertise_addresses == ["192.168.0.1", "192.168.1.1:5000"]
    assert cfg.peer_timeout == 600 and cfg.keepalive is None
    assert cfg.crypto.private_key == TEST_PRIVATE
    assert cfg.crypto.public_key == base62.encode(Identity.from_config(password="test").public_key)
    assert cfg.crypto.trusted_keys == [other]
    assert cfg.crypto.algorithms == ["PLAIN", "CHACHA20"]
    assert (cfg.device.type, cfg.device.name, cfg.device.path) == ("tun", "vpn%d", "/dev/net/tun")
    assert cfg.device.fix_rp_filter is True and cfg.mode == "switch" and cfg.switch_timeout == 120
    assert cfg.ip == "10.2.0.1/16" and cfg.auto_claim is False
    assert cfg.claims == ["10.3.0.0/24", "10.4.0.0/24"]
    assert (cfg.ifup, cfg.ifdown) == ("ip link set up", "true")
    assert cfg.beacon.store == "/run/beacon.txt"
    assert cfg.beacon.load == "|curl -s http://example.com/beacon"
    assert cfg.beacon.interval == 60 and cfg.beacon.password == "beaconpw"
    assert cfg.stats_file is None
    assert (cfg.statsd.server, cfg.statsd.prefix) == ("stats.example.com:8125", "vpn")
    assert (cfg.user, cfg.group, cfg.pid_file) == ("nobody", "nogroup", "/run/net.pid")
    assert cfg.hook == "logger hook"
    assert cfg.hooks == {"vpn_started": "echo started", "peer_connected": "echo $PEER"}
    assert TEST_PRIVATE not in script.output and "beaconpw" not in script.output


def test_editing_keeps_untouched_values_and_hides_secrets(tmp_path: Path) -> None:
    path = tmp_path / "office.net"
    original = ConfigFile(peers=["old:3210"], ip="10.5.0.1/24", mode="hub", user="vpn")
    original.crypto.password = PASSWORD
    original.hooks = {"vpn_started": "echo hi"}
    write_config(str(path), original)
    script, _ = run_wizard(
        tmp_path,
        [
            ("Choice", "2"),  # the menu: office
            ("Choice", "1"),
            ("Peer addresses", ""),
            ("new crypto", ""),  # default: no
            ("Virtual IP", ""),
            ("Finish configuration?", "y"),
        ],
        name=None,
    )
    cfg = load_config_file(str(path))
    assert cfg.peers == ["old:3210"] and cfg.ip == "10.5.0.1/24" and cfg.mode == "hub"
    assert cfg.user == "vpn" and cfg.hooks == {"vpn_started": "echo hi"}
    assert cfg.crypto.password == PASSWORD
    assert "2) office" in script.output and "[old:3210]" in script.output
    assert PASSWORD not in script.output


def test_existing_secret_shows_set_keep(tmp_path: Path) -> None:
    cfg = ConfigFile()
    cfg.crypto.password = PASSWORD
    cfg.beacon.password = "beaconpw"
    write_config(str(tmp_path / "net.net"), cfg)
    steps = [("Choice", "3"), ("Listen", ""), ("Peer", ""), ("port forwarding", ""), ("advertise", "")]
    steps += [("Peer timeout", ""), ("Keepalive", ""), ("new crypto", "n"), ("Numbers", "")]
    steps += [("Device type", ""), ("Device name", ""), ("Device path", ""), ("rp_filter", "")]
    steps += [("mode", ""), ("Virtual IP", ""), ("claim the virtual", ""), ("claimed networks", "")]
    steps += [("ifup", ""), ("ifdown", ""), ("Store beacons", ""), ("Load beacons", "")]
    steps += [("Beacon interval", ""), ("Beacon password (set, keep)", ""), ("Statistics", "")]
    steps += [("Statsd server", ""), ("user", ""), ("group", ""), ("PID", ""), ("Global hook", "")]
    steps += [("Hook for", "")] * 7 + [("Finish", "y")]
    script, path = run_wizard(tmp_path, steps)
    loaded = load_config_file(path)
    assert loaded.crypto.password == PASSWORD and loaded.beacon.password == "beaconpw"
    assert loaded.crypto.algorithms == []
    assert PASSWORD not in script.output and "beaconpw" not in script.output


def test_beacon_targets_keep_their_kind(tmp_path: Path) -> None:
    cfg = ConfigFile()
    cfg.beacon.store = "|old command"
    cfg.beacon.load = "/old/file"
    cfg.beacon.password = "beaconpw"
    script = Script(
        [
            ("Store beacons:\n  1) None", ""),  # default: command
            ("Command [old command]", ""),
            ("Load beacons", "3"),  # file -> command: the path is no default
            ("Command: ", ""),
            ("Command: ", "cat /x"),
            ("Beacon interval in seconds [3600]", ""),
            ("Beacon password (set, keep)", "-"),
        ]
    )
    Wizard(script.prompter(), cfg).beacons()
    assert script.steps == []
    assert cfg.beacon.store == "|old command" and cfg.beacon.load == "|cat /x"
    assert cfg.beacon.interval == 3600 and cfg.beacon.password is None
    assert "a value is required" in script.output


def test_bad_answers_are_asked_again(tmp_path: Path) -> None:
    script, path = run_wizard(
        tmp_path,
        [
            ("Choice", "7"),
            ("Choice", "2"),
            ("Listen address", "host:notaport"),
            ("Listen address", "3000"),
            ("Peer addresses", ""),
            ("port forwarding", "maybe"),
            ("port forwarding", "n"),
            ("Authentication method", "1"),
            ("Password", PASSWORD),
            ("Confirm password", "typo"),
            ("Password", PASSWORD),
            ("Confirm password", PASSWORD),
            ("Device type", ""),
            ("Virtual IP", "300.1.1.1"),
            ("Virtual IP", "10.0.0.1/40"),
            ("Virtual IP", "10.0.0.2"),
            ("claim the virtual", ""),
            ("Statistics file", ""),
            ("Finish configuration?", "y"),
        ],
    )
    cfg = load_config_file(path)
    assert cfg.listen == "3000" and cfg.ip == "10.0.0.2" and cfg.crypto.password == PASSWORD
    assert cfg.auto_claim is True and cfg.device.type == "tun"
    assert script.output.count("Invalid input") == 3
    assert "Please enter a number from 1 to 3" in script.output
    assert "do not match" in script.output
    assert PASSWORD not in script.output


def test_bad_private_key_is_asked_again_without_echo(tmp_path: Path) -> None:
    script, path = run_wizard(
        tmp_path,
        [
            ("Choice", "2"),
            ("Listen", ""),
            ("Peer", ""),
            ("port forwarding", ""),
            ("Authentication method", "2"),
            ("Choice", "2"),
            ("Private key", "not!base62"),
            ("Private key", TEST_PRIVATE),
            ("Trusted public keys", "short!"),
            ("Trusted public keys", ""),
            ("Device type", ""),
            ("Virtual IP", ""),
            ("claim", ""),
            ("Statistics", ""),
            ("Finish", "y"),
        ],
    )
    assert load_config_file(path).crypto.private_key == TEST_PRIVATE
    assert "not!base62" not in script.output and TEST_PRIVATE not in script.output
    assert script.output.count("Invalid input") == 2


def test_not_finished_loops_with_current_answers(tmp_path: Path) -> None:
    steps = [*SIMPLE[:-1], ("Finish configuration?", "n")]
    steps += [
        ("Choice [1]", ""),
        ("Peer addresses (HOST:PORT) (comma separated) [1.2.3.4:3210, node2.example.com:3210]", "-"),
        ("new crypto", ""),
        ("Virtual IP address of this node (A.B.C.D[/LEN]) [10.0.0.1/24]", ""),
        ("Finish configuration?", "y"),
    ]
    _, path = run_wizard(tmp_path, steps)
    cfg = load_config_file(path)
    assert cfg.peers == [] and cfg.ip == "10.0.0.1/24" and cfg.crypto.password == PASSWORD


@pytest.mark.parametrize("stop", [EOFError, KeyboardInterrupt])
def test_abort_writes_nothing(tmp_path: Path, stop: type[BaseException]) -> None:
    existing = tmp_path / "net.net"
    write_config(str(existing), ConfigFile(peers=["keep:1"]))
    before = existing.read_bytes()
    answers = iter(["1", "new:1"])

    def read(prompt: str) -> str:
        for answer in answers:
            return answer
        raise stop

    with pytest.raises(WizardAbort):
        configure("net", str(tmp_path), Prompter(read, lambda _line: None))
    with pytest.raises(WizardAbort):
        configure("fresh", str(tmp_path), Prompter(read, lambda _line: None))
    assert existing.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["net.net"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("device_type: tap\nshared_key: s\nport: 3000\n", "migrate-config"),
        ("peers: [a\n  - b: {\n", "not a valid config file"),
        ("mode: bridge\n", "not a valid config file"),
    ],
)
def test_v1_or_broken_file_is_refused_unchanged(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "net.net"
    path.write_text(content)
    script = Script([])
    with pytest.raises(ConfigError, match=message):
        configure("net", str(tmp_path), script.prompter())
    assert path.read_text() == content
    assert script.lines == []  # refused before the first question
    r = run_cli("config", "-n", "net", "--dir", str(tmp_path))
    assert r.returncode != 0 and message in r.stdout and "Traceback" not in r.stdout + r.stderr
    assert path.read_text() == content


def test_unusable_directory_is_refused(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        configure("net", str(not_a_dir), Script([]).prompter())
    with pytest.raises(ConfigError, match="does not exist"):
        configure("net", str(tmp_path / "missing"), Script([]).prompter())
    r = run_cli("config", "-n", "net", "--dir", str(not_a_dir))
    assert r.returncode != 0 and "ERROR - " in r.stdout and "Traceback" not in r.stderr
    assert not_a_dir.read_text() == "x"


def test_eof_on_the_command_line_exits_1_writing_nothing(tmp_path: Path) -> None:
    r = run_cli("config", "-n", "net", "--dir", str(tmp_path))
    assert r.returncode == 1 and "Aborted, nothing was written" in r.stderr
    assert os.listdir(tmp_path) == []


def test_network_name_checks(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid network name"):
        configure("../evil", str(tmp_path), Script([]).prompter())
    script, path = run_wizard(
        tmp_path,
        [("Choice", ""), ("Name of the new network", "a/b"), ("Name of the new network", "lab-1"), *SIMPLE],
        name=None,
    )
    assert path == str(tmp_path / "lab-1.net")
    assert "Invalid input" in script.output


def test_write_config_replaces_a_world_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "x.net"
    path.write_text("old")
    os.chmod(path, 0o644)
    write_config(str(path), ConfigFile(ip="10.0.0.1"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_config_file(str(path)).ip == "10.0.0.1"
    assert os.listdir(tmp_path) == ["x.net"]


def test_cli_registration_and_completion() -> None:
    r = run_cli("-q", "config", "--help")
    assert r.returncode == 0 and "--name" in r.stdout and "--dir" in r.stdout
    assert "config" in run_cli("--help").stdout
    for shell in ("bash", "zsh", "fish"):
        script = completion_script(build_parser(), shell)
        assert "config" in script and "dir" in script


# --- the real command on a pseudo-terminal --------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PASSWORD", "PRIVATE_KEY")}
    return subprocess.run(
        [sys.executable, "-m", "vpncloud", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def _make_controlling_tty() -> None:
    # after setsid (start_new_session): the pty on stdin becomes /dev/tty, which getpass opens
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Pty:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.seen = b""
        self.pos = 0

    def expect(self, text: str, timeout: float = 20.0) -> None:
        wanted = text.encode()
        deadline = time.monotonic() + timeout
        while wanted not in self.seen[self.pos :]:
            left = deadline - time.monotonic()
            assert left > 0, (
                f"timed out waiting for {text!r}; output so far:\n{self.seen.decode(errors='replace')}"
            )
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # EIO: the child closed the terminal
                    chunk = b""
                assert chunk, f"terminal closed waiting for {text!r}:\n{self.seen.decode(errors='replace')}"
                self.seen += chunk
        self.pos = self.seen.index(wanted, self.pos) + len(wanted)

    def send(self, line: str) -> None:
        os.write(self.fd, line.encode() + b"\r")

    def drain(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], deadline - time.monotonic())
            if not ready:
                return
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:
                return
            if not chunk:
                return
            self.seen += chunk


def test_end_to_end_on_a_pty(tmp_path: Path) -> None:
    master, slave = os.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("PASSWORD", "PRIVATE_KEY")}
    env["TERM"] = "dumb"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vpncloud", "config", "-n", "testnet", "--dir", str(tmp_path)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
        preexec_fn=_make_controlling_tty,
        close_fds=True,
    )
    os.close(slave)
    term = Pty(master)
    try:
        term.expect("Choice [1]: ")
        term.send("1")
        term.expect("Peer addresses (HOST:PORT) (comma separated): ")
        term.send("10.20.30.40:3210")
        term.expect("Password: ")
        term.send(PASSWORD)
        term.expect("Confirm password: ")
        term.send(PASSWORD)
        term.expect("Virtual IP address of this node (A.B.C.D[/LEN]): ")
        term.send("10.0.0.7/24")
        term.expect("Finish configuration? [Y/n]: ")
        term.send("y")
        term.expect("sudo systemctl disable vpncloud@testnet")
        term.drain()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert PASSWORD.encode() not in term.seen  # getpass switched the echo off
    assert b"may be echoed" not in term.seen  # and it used the terminal, not a fallback
    assert b"10.20.30.40:3210" in term.seen  # ordinary answers are echoed by the terminal
    path = tmp_path / "testnet.net"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    cfg = load_config_file(str(path))
    assert cfg.peers == ["10.20.30.40:3210"] and cfg.crypto.password == PASSWORD and cfg.ip == "10.0.0.7/24"
