"""The README's commands work when pasted as written after the first one (setup).

A newcomer on a fresh machine has no ``vpncloud`` on the PATH and no ``sudo``: every command in a
``sh`` block must name a program that exists after ``scripts/setup.sh`` (``.venv/bin/...``, a script
of this repository, or a system tool the setup installs), every repository path it names must exist,
and every ``vpncloud`` subcommand it uses must be one the CLI accepts. Inline code in the prose that
starts with a bare ``vpncloud`` would give ``command not found`` as well.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: What a command may start with besides .venv/bin/ and bash: system tools that setup.sh installs.
SYSTEM_TOOLS = {"ip", "ping", "iperf3", "tcpdump", "podman"}


def _sh_commands(text: str) -> list[list[str]]:
    """The simple commands of every ```sh block: continuation lines joined, comments dropped, split
    at ``&&``, ``||`` and ``;``, leading VAR=value assignments dropped."""
    commands = []
    for body in re.findall(r"^```sh\n(.*?)^```", text, flags=re.M | re.S):
        for line in body.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            words: list[str] = []
            for token in [*lexer, ";"]:
                if token in ("&&", "||", ";"):
                    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
                        words.pop(0)
                    if words:
                        commands.append(words)
                    words = []
                else:
                    words.append(token)
    return commands


def _console_scripts() -> set[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return set(tomllib.load(f)["project"]["scripts"])


def _all_commands() -> list[list[str]]:
    return _sh_commands(README.read_text())


def test_readme_has_the_two_commands_and_ci_runs_the_second() -> None:
    first = README.read_text().split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line for line in first.splitlines() if line.strip() and not line.startswith("#")]
    assert len(commands) == 2, commands
    assert commands[0].startswith("bash scripts/setup.sh && ")
    assert commands[1] == "bash scripts/test.sh"
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^bash scripts/test\.sh\b", ci, flags=re.M), ".ci/run must call the test command"


def test_every_readme_command_names_a_program_that_exists_after_setup() -> None:
    scripts = _console_scripts() | {"python"}
    problems = []
    commands = _all_commands()
    assert len(commands) >= 10, "the README's sh blocks were not found"
    for words in commands:
        program = words[0]
        if program == "bash":
            if not (ROOT / words[1]).is_file():
                problems.append(f"{' '.join(words)}: no script {words[1]}")
        elif program.startswith(".venv/bin/"):
            if program.removeprefix(".venv/bin/") not in scripts:
                problems.append(f"{' '.join(words)}: setup installs no {program}")
        elif program not in SYSTEM_TOOLS:
            problems.append(f"{' '.join(words)}: {program!r} is not on a fresh machine's PATH after setup")
        for word in words[1:]:
            # repository paths (inventories/..., bench/..., docs/...) must exist
            is_path = "/" in word and not word.startswith(("/", "-")) and "=" not in word
            if is_path and not (ROOT / word).exists():
                problems.append(f"{' '.join(words)}: no {word} in the repository")
    assert not problems, "\n".join(problems)


def test_no_bare_vpncloud_command_in_the_prose() -> None:
    prose = re.sub(r"^```.*?^```", "", README.read_text(), flags=re.M | re.S)
    # `vpncloud plan` names a subcommand; `vpncloud plan FILE` is a command to paste
    bare = [m for m in re.findall(r"`([^`\n]+)`", prose) if re.match(r"^(sudo )?vpncloud \S+ \S", m)]
    assert not bare, f"bare vpncloud commands (command not found after setup): {bare}"


@pytest.mark.parametrize(
    "words",
    sorted({tuple(w[1:3]) for w in _all_commands() if w[0] == ".venv/bin/vpncloud"}),
    ids=lambda w: " ".join(w),
)
def test_every_vpncloud_subcommand_in_the_readme_is_accepted(words: tuple[str, ...]) -> None:
    sub = [words[0]] if words[0] != "lab" else list(words[:2])
    if sub[0].startswith("-"):
        sub = []
    proc = subprocess.run(
        [sys.executable, "-m", "vpncloud", *sub, "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"vpncloud {' '.join(sub)} --help: {proc.stderr.strip()}"
