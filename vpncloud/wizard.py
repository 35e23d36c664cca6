"""``vpncloud config``: the original's interactive configuration editor (spec 21.1).

The original draws its menus with a terminal widget library; this one is line based (numbered menus,
yes/no questions, free text with the current value as default) so that it works over any terminal
and can be scripted. All input and output goes through :class:`Prompter`, whose three callables the
tests replace with scripted answers.

The edited :class:`~vpncloud.config.ConfigFile` is written with the same serialisation as
``migrate-config`` (every key, unset ones null), atomically and with mode 0600 from the start because
it holds the password or private key.
"""

from __future__ import annotations

import contextlib
import enum
import getpass
import os
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import TypeVar

from vpncloud.config import (
    HOOK_EVENTS,
    MODES,
    ConfigError,
    ConfigFile,
    load_config_text,
    parse_advertise,
    parse_claim,
    parse_ip,
    parse_listen_addr,
    read_config_text,
)
from vpncloud.core import base62
from vpncloud.core.errors import DecodeError
from vpncloud.core.identity import Identity, seed_from_password
from vpncloud.core.primitives import Rng, SystemRng, ed25519_public_key

__all__ = ["Level", "Prompter", "Wizard", "WizardAbort", "configure", "run_config_command"]

EXIT_ABORT = 1
#: What a user types to unset an optional value (an empty answer keeps the current one).
CLEAR = "-"
#: Config names become systemd instance names and file names, so keep them to a safe alphabet.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: (menu label, stored name) in the order the original offers them.
ALGORITHMS = (
    ("Unencrypted", "PLAIN"),
    ("AES-128", "AES128"),
    ("AES-256", "AES256"),
    ("ChaCha20", "CHACHA20"),
)
_DEFAULT_ALGORITHMS = ("AES128", "AES256", "CHACHA20")

T = TypeVar("T")


class WizardAbort(Exception):
    """The user ended the input (Ctrl-D) or interrupted (Ctrl-C): nothing is written."""


class Level(enum.IntEnum):
    """How many questions are asked; each level includes the ones below it."""

    SIMPLE = 0
    ADVANCED = 1
    EXPERT = 2


def _u32(text: str) -> int:
    try:
        value = int(text.strip(), 10)
    except ValueError:
        raise ConfigError(f"{text!r} is not a number") from None
    if not 0 <= value < 1 << 32:
        raise ConfigError(f"{value} is out of range (0 to {(1 << 32) - 1})")
    return value


def _check_key(text: str) -> None:
    try:
        base62.decode_key(text)
    except DecodeError as exc:
        raise ConfigError(f"invalid key {text!r}: {exc}") from None


def _check_statsd(text: str) -> None:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ConfigError(f"invalid statsd server {text!r} (expected HOST:PORT)")


def _check_device_name(text: str) -> None:
    # the kernel limit IFNAMSIZ-1, checked the same way as Config.validate
    if not text or len(text.replace("%d", "0").encode()) >= 16:
        raise ConfigError(f"device name {text!r} must be 1 to 15 bytes long")


def check_network_name(name: str) -> None:
    """Reject names that are no safe file stem / systemd instance name."""
    if not _NAME_RE.match(name):
        raise ConfigError(
            f"invalid network name {name!r} (use letters, digits, '.', '_' and '-', not starting with "
            "'.' or '-')"
        )


class Prompter:
    """Line-based questions on top of three callables.

    ``read_line(prompt)`` and ``read_secret(prompt)`` return one answer without the newline and raise
    ``EOFError``/``KeyboardInterrupt`` when the user gives up; ``write(line)`` prints one line.
    A bad answer is reported and the question is asked again.
    """

    def __init__(
        self,
        read_line: Callable[[str], str],
        write: Callable[[str], None],
        read_secret: Callable[[str], str] | None = None,
    ) -> None:
        self._read_line = read_line
        self._read_secret = read_secret or read_line
        self.write = write

    def _read(self, prompt: str, *, secret: bool = False) -> str:
        try:
            answer = (self._read_secret if secret else self._read_line)(prompt)
        except (EOFError, KeyboardInterrupt):
            raise WizardAbort() from None
        # spaces may be part of a password, so only visible answers are trimmed
        return answer if secret else answer.strip()

    def section(self, title: str) -> None:
        self.write("")
        self.write(f"--- {title} ---")

    def select(self, question: str, options: Sequence[str], default: int = 0) -> int:
        """A numbered menu; returns the index of the chosen option."""
        self.write(question)
        for i, option in enumerate(options, 1):
            self.write(f"  {i}) {option}")
        while True:
            answer = self._read(f"Choice [{default + 1}]: ")
            if not answer:
                return default
            if answer.isdigit() and 1 <= int(answer) <= len(options):
                return int(answer) - 1
            self.write(f"Please enter a number from 1 to {len(options)}.")

    def multiselect(self, question: str, options: Sequence[str], selected: Sequence[int]) -> list[int]:
        """Several numbers, comma separated; returns the chosen indices in menu order."""
        self.write(question)
        for i, option in enumerate(options, 1):
            self.write(f"  {i}) [{'x' if i - 1 in selected else ' '}] {option}")
        default = ",".join(str(i + 1) for i in sorted(selected))
        while True:
            answer = self._read(f"Numbers, comma separated [{default}]: ")
            if not answer:
                return sorted(selected)
            parts = [p.strip() for p in answer.split(",") if p.strip()]
            if parts and all(p.isdigit() and 1 <= int(p) <= len(options) for p in parts):
                return sorted({int(p) - 1 for p in parts})
            self.write(f"Please enter numbers from 1 to {len(options)}, separated by commas.")

    def confirm(self, question: str, default: bool) -> bool:
        hint = "Y/n" if default else "y/N"
        while True:
            answer = self._read(f"{question} [{hint}]: ").lower()
            if not answer:
                return default
            if answer in ("y", "yes"):
                return True
            if answer in ("n", "no"):
                return False
            self.write("Please answer y or n.")

    def ask(self, prompt: str, check: Callable[[str], T], *, secret: bool = False) -> tuple[str, T]:
        """Ask until ``check(answer)`` accepts; returns the answer and what ``check`` made of it.

        For a secret, ``check``'s error messages must not quote the answer.
        """
        while True:
            answer = self._read(prompt, secret=secret)
            try:
                return answer, check(answer)
            except (ConfigError, DecodeError, ValueError) as exc:
                self.write(f"Invalid input: {exc}")

    def text(
        self, question: str, current: str | None, check: Callable[[str], object] | None = None
    ) -> str | None:
        """Optional free text; empty keeps ``current``, ``-`` clears it."""

        def parse(answer: str) -> str | None:
            if not answer:
                return current
            if answer == CLEAR:
                return None
            if check is not None:
                check(answer)
            return answer

        shown = f" [{current}]" if current is not None else ""
        return self.ask(f"{question}{shown}: ", parse)[1]

    def required_text(
        self, question: str, current: str | None, check: Callable[[str], object] | None = None
    ) -> str:
        """Free text that must not be empty; empty input keeps ``current`` if there is one."""

        def parse(answer: str) -> str:
            if not answer:
                if not current:
                    raise ConfigError("a value is required")
                return current
            if check is not None:
                check(answer)
            return answer

        shown = f" [{current}]" if current else ""
        return self.ask(f"{question}{shown}: ", parse)[1]

    def number(self, question: str, current: int) -> int:
        return self.ask(f"{question} [{current}]: ", lambda a: _u32(a) if a else current)[1]

    def items(
        self, question: str, current: Sequence[str], check: Callable[[str], object] | None = None
    ) -> list[str]:
        """A comma separated list; empty keeps ``current``, ``-`` empties it."""

        def parse(answer: str) -> list[str]:
            if not answer:
                return list(current)
            if answer == CLEAR:
                return []
            values = [part.strip() for part in answer.split(",") if part.strip()]
            if check is not None:
                for value in values:
                    check(value)
            return values

        shown = f" [{', '.join(current)}]" if current else ""
        return self.ask(f"{question} (comma separated){shown}: ", parse)[1]

    def secret(self, question: str, current: str | None, *, repeat: bool = False) -> str | None:
        """A hidden answer; the current value is never shown, only that one is set.

        Empty keeps the current value; ``-`` clears it. With ``repeat`` a new value must be typed twice.
        """
        shown = " (set, keep)" if current is not None else ""
        while True:
            answer = self._read(f"{question}{shown}: ", secret=True)
            if not answer:
                if current is not None or not repeat:
                    return current
                self.write("A value is required.")
                continue
            if answer == CLEAR:
                if not repeat:
                    return None
                self.write("A value is required.")
                continue
            if repeat and self._read(f"Confirm {question[0].lower()}{question[1:]}: ", secret=True) != answer:
                self.write("The entries do not match, please try again.")
                continue
            return answer


class Wizard:
    """Asks the sections of spec 21.1 and edits a :class:`ConfigFile` in place."""

    def __init__(self, ui: Prompter, config: ConfigFile, rng: Rng | None = None) -> None:
        self.ui = ui
        self.config = config
        self.rng: Rng = rng or SystemRng()
        self.level = Level.SIMPLE

    def run(self) -> ConfigFile:
        """Ask until the user confirms "Finish configuration?"; abort raises :class:`WizardAbort`."""
        self.ui.write("Press Enter to keep the value shown in brackets; enter - to clear an optional value.")
        while True:
            self.level = Level(
                self.ui.select("Configuration level:", ("Simple", "Advanced", "Expert"), self.level)
            )
            self.connectivity()
            self.crypto()
            self.device()
            self.addresses()
            if self.level >= Level.EXPERT:
                self.beacons()
            if self.level >= Level.ADVANCED:
                self.stats()
            if self.level >= Level.EXPERT:
                self.process()
                self.hooks()
            self.ui.write("")
            if self.ui.confirm("Finish configuration?", True):
                return self.config

    def connectivity(self) -> None:
        c, ui, expert = self.config, self.ui, self.level >= Level.EXPERT
        ui.section("Connectivity")
        if self.level >= Level.ADVANCED:
            c.listen = ui.required_text(
                "Listen address (port, IP:PORT or ws://...)", c.listen or "3210", _listen
            )
        c.peers = ui.items("Peer addresses (HOST:PORT)", c.peers, _peer)
        if self.level >= Level.ADVANCED:
            c.port_forwarding = ui.confirm(
                "Enable automatic port forwarding (UPnP)?", c.port_forwarding is not False
            )
        if expert:
            c.advertise_addresses = ui.items(
                "Additional addresses to advertise", c.advertise_addresses, lambda a: parse_advertise(a, 0)
            )
            c.peer_timeout = ui.number("Peer timeout in seconds", _or(c.peer_timeout, 300))
            keepalive = ui.number("Keepalive interval in seconds (0 = default)", c.keepalive or 0)
            c.keepalive = keepalive or None

    def crypto(self) -> None:
        cr, ui = self.config.crypto, self.ui
        ui.section("Crypto")
        exists = cr.password is not None or cr.private_key is not None
        if not exists or ui.confirm("Create a new crypto configuration?", False):
            use_keys = self.level >= Level.ADVANCED and ui.select(
                "Authentication method:", ("Password", "Key pair"), 1 if cr.private_key is not None else 0
            )
            if use_keys:
                self._key_pair()
            else:
                cr.password = ui.secret("Password", None, repeat=True)
                cr.private_key = cr.public_key = None
                cr.trusted_keys = []
        if self.level >= Level.EXPERT:
            names = [name for _label, name in ALGORITHMS]
            current = [a.upper() for a in cr.algorithms] or list(_DEFAULT_ALGORITHMS)
            chosen = ui.multiselect(
                "Allowed crypto algorithms:",
                [label for label, _name in ALGORITHMS],
                [names.index(a) for a in current if a in names],
            )
            # the default set is stored as the empty list so later versions' defaults apply
            algos = [names[i] for i in chosen]
            cr.algorithms = [] if algos == list(_DEFAULT_ALGORITHMS) else algos

    def _key_pair(self) -> None:
        cr, ui = self.config.crypto, self.ui
        how = ui.select(
            "Key pair:", ("Generate a new key pair", "Enter a private key", "Generate from a password")
        )
        if how == 0:
            seed = self._random_seed()
        elif how == 1:
            seed = ui.ask("Private key: ", _private_seed, secret=True)[1]
        else:
            password = ui.secret("Password for the key pair", None, repeat=True)
            assert password is not None  # repeat=True without a current value always returns text
            seed = seed_from_password(password)
        public = base62.encode(ed25519_public_key(seed))
        cr.password = None
        cr.private_key = base62.encode(seed)
        cr.public_key = public
        ui.write(f"Public key: {public}")
        ui.write("Use this public key on the other nodes to trust this one (the private key stays here).")
        trusted = ui.items("Trusted public keys", cr.trusted_keys or [public], _check_key)
        cr.trusted_keys = trusted

    def _random_seed(self) -> bytes:
        # like genkey: redraw keys with a leading zero byte, which the original cannot parse (quirk 2)
        while True:
            seed = self.rng.randbytes(32)
            if seed[0] and ed25519_public_key(seed)[0]:
                return seed

    def device(self) -> None:
        d, c, ui = self.config.device, self.config, self.ui
        if self.level < Level.ADVANCED:
            return
        ui.section("Device")
        types = ("tun", "tap")
        d.type = types[
            ui.select(
                "Device type (tun: IP packets, tap: Ethernet frames):", types, types.index(d.type or "tun")
            )
        ]
        if self.level >= Level.EXPERT:
            d.name = ui.required_text(
                "Device name (%d = free number)", d.name or "vpncloud%d", _check_device_name
            )
            d.path = ui.required_text("Device path", d.path or "/dev/net/tun")
            d.fix_rp_filter = ui.confirm("Fix the rp_filter setting?", bool(d.fix_rp_filter))
            c.mode = MODES[ui.select("Forwarding mode:", MODES, MODES.index(c.mode or "normal"))]
            if c.mode == "switch":
                c.switch_timeout = ui.number("Switch table timeout in seconds", _or(c.switch_timeout, 300))

    def addresses(self) -> None:
        c, ui = self.config, self.ui
        ui.section("Addresses")
        c.ip = ui.text("Virtual IP address of this node (A.B.C.D[/LEN])", c.ip, parse_ip)
        if (c.device.type or "tun") == "tun":
            if self.level >= Level.ADVANCED:
                c.auto_claim = ui.confirm(
                    "Automatically claim the virtual IP address?", c.auto_claim is not False
                )
            if self.level >= Level.EXPERT:
                c.claims = ui.items("Additional claimed networks (ADDR/PREFIX)", c.claims, parse_claim)
        else:
            # a TAP network forwards by learned MAC addresses, claims do not apply
            c.claims = []
        if self.level >= Level.EXPERT:
            c.ifup = ui.text("Command to run after the device is up (ifup)", c.ifup)
            c.ifdown = ui.text("Command to run before the device goes down (ifdown)", c.ifdown)

    def beacons(self) -> None:
        b, ui = self.config.beacon, self.ui
        ui.section("Beacons")
        b.store = self._beacon_target("Store beacons", b.store)
        b.load = self._beacon_target("Load beacons", b.load)
        b.interval = ui.number("Beacon interval in seconds", _or(b.interval, 3600))
        b.password = ui.secret("Beacon password", b.password)

    def _beacon_target(self, what: str, current: str | None) -> str | None:
        ui = self.ui
        is_command = current is not None and current.startswith("|")
        kind = ui.select(
            f"{what}:",
            ("None", "To/from a file", "Via a command"),
            0 if current is None else 2 if is_command else 1,
        )
        if kind == 0:
            return None
        if kind == 1:
            return ui.required_text("File path", None if is_command else current, _not_command)
        command = ui.required_text("Command", current[1:] if current is not None and is_command else None)
        return "|" + command

    def stats(self) -> None:
        c, ui = self.config, self.ui
        ui.section("Statistics")
        c.stats_file = ui.text("Statistics file", c.stats_file)
        if self.level >= Level.EXPERT:
            c.statsd.server = ui.text("Statsd server (HOST:PORT)", c.statsd.server, _check_statsd)
            # a prefix without a server is rejected by the daemon
            c.statsd.prefix = ui.text("Statsd prefix", c.statsd.prefix) if c.statsd.server else None

    def process(self) -> None:
        c, ui = self.config, self.ui
        ui.section("Process")
        c.user = ui.text("Run as user", c.user)
        c.group = ui.text("Run as group", c.group)
        c.pid_file = ui.text("PID file (with --daemon)", c.pid_file)

    def hooks(self) -> None:
        c, ui = self.config, self.ui
        ui.section("Hooks")
        c.hook = ui.text("Global hook command (all events)", c.hook)
        hooks: dict[str, str] = {}
        for event in HOOK_EVENTS:
            command = ui.text(f"Hook for {event}", c.hooks.get(event))
            if command is not None:
                hooks[event] = command
        c.hooks = hooks


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def _listen(text: str) -> None:
    if not text.startswith("ws://"):  # a ws:// URL goes through the proxy (spec 16.3)
        parse_listen_addr(text)


def _peer(text: str) -> None:
    if any(ch.isspace() for ch in text):
        raise ConfigError(f"invalid peer address {text!r}")


def _not_command(text: str) -> None:
    if text.startswith("|"):
        raise ConfigError("a path must not start with '|' (choose 'Via a command' instead)")


def _private_seed(text: str) -> bytes:
    # the messages must not quote the key: it is a secret
    if not text:
        raise ConfigError("a private key is required")
    try:
        return Identity.from_config(private_key=text).seed
    except (ConfigError, DecodeError, ValueError):
        raise ConfigError("not a valid private key (43 base62 characters expected)") from None


# --- files ----------------------------------------------------------------------------------------


def _load_existing(path: str) -> ConfigFile:
    text = read_config_text(path)
    try:
        return load_config_text(text)
    except ConfigError as exc:
        v2_error = exc
    try:
        load_config_text(text, allow_v1=True)
    except ConfigError:
        raise ConfigError(f"{path} is not a valid config file ({v2_error}); not changed") from None
    raise ConfigError(
        f"{path} is not a version 2 config file ({v2_error}); if it is a version 1 file, migrate it first "
        f"with: vpncloud migrate-config --config-file {path}"
    )


def _check_directory(directory: str) -> None:
    if not os.path.isdir(directory):
        raise ConfigError(f"Config directory {directory} does not exist or is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(f"Config directory {directory} is not writable (run as root?)")


def write_config(path: str, config: ConfigFile) -> None:
    """Write atomically: a 0600 temp file in the same directory, then rename over ``path``."""
    text = config.to_yaml()
    load_config_text(text)  # never save a file the daemon would reject
    directory = os.path.dirname(path) or "."
    # mkstemp creates the file 0600, so the secrets are never readable by others, not even briefly
    fd, tmp = tempfile.mkstemp(prefix=".vpncloud-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _choose_name(ui: Prompter, directory: str) -> str:
    existing = sorted(
        entry[:-4] for entry in os.listdir(directory) if entry.endswith(".net") and len(entry) > 4
    )
    choice = ui.select("Network to configure:", ["New network", *existing])
    if choice:
        return existing[choice - 1]
    return ui.ask("Name of the new network: ", _network_name)[1]


def _network_name(text: str) -> str:
    check_network_name(text)
    return text


def configure(name: str | None, directory: str, ui: Prompter, rng: Rng | None = None) -> str:
    """Run the whole wizard; returns the written path.

    Raises :class:`ConfigError` for an unusable directory or file (checked before any question) and
    :class:`WizardAbort` when the user gives up; in both cases nothing is written.
    """
    _check_directory(directory)
    if name is not None:
        check_network_name(name)
    else:
        name = _choose_name(ui, directory)
    path = os.path.join(directory, f"{name}.net")
    if os.path.exists(path):
        config = _load_existing(path)
        ui.write(f"Editing {path}")
    else:
        config = ConfigFile()
        ui.write(f"Creating {path}")
    Wizard(ui, config, rng).run()
    write_config(path, config)
    ui.write("")
    ui.write(f"Configuration saved to {path}")
    ui.write("Use the following commands to control the VPN:")
    ui.write(f"  start:  sudo service vpncloud@{name} start")
    ui.write(f"  stop:   sudo service vpncloud@{name} stop")
    ui.write(f"  status: sudo service vpncloud@{name} status")
    ui.write(f"  start at boot:      sudo systemctl enable vpncloud@{name}")
    ui.write(f"  not start at boot:  sudo systemctl disable vpncloud@{name}")
    return path


def run_config_command(name: str | None, directory: str) -> int:
    """``vpncloud config`` on the real terminal; errors other than abort propagate as ConfigError."""

    def write(line: str) -> None:
        print(line, flush=True)

    # getpass reads from the terminal without echo; piped input has no echo to switch off
    secret = getpass.getpass if sys.stdin.isatty() else input
    try:
        configure(name, directory, Prompter(input, write, secret))
    except WizardAbort:
        print("\nAborted, nothing was written.", file=sys.stderr)
        return EXIT_ABORT
    return 0
