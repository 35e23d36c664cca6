"""Shell completion scripts generated from the argparse parser (``vpncloud completion``)."""

from __future__ import annotations

import argparse


def _options(parser: argparse.ArgumentParser) -> list[str]:
    opts: list[str] = []
    for action in parser._actions:
        opts.extend(s for s in action.option_strings if s not in opts)
    return opts


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """Return the completion script for ``bash``, ``zsh`` or ``fish``."""
    prog = parser.prog
    top = _options(parser)
    subs = _subcommands(parser)
    if shell == "fish":
        lines = [f"# fish completion for {prog}", f"complete -c {prog} -f"]
        for name, sp in subs.items():
            lines.append(
                f"complete -c {prog} -n '__fish_use_subcommand' -a {name} -d {_q(sp.description or name)}"
            )
            for opt in _options(sp):
                lines.append(f"complete -c {prog} -n '__fish_seen_subcommand_from {name}' {_fish_opt(opt)}")
        for opt in top:
            lines.append(f"complete -c {prog} -n '__fish_use_subcommand' {_fish_opt(opt)}")
        return "\n".join(lines) + "\n"
    func = f"_{prog.replace('-', '_')}"
    case_lines = []
    for name, sp in subs.items():
        case_lines.append(f'        {name}) opts="{" ".join(_options(sp))}" ;;')
    body = "\n".join(case_lines)
    bash = f"""{func}() {{
    local cur sub opts i
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    sub=""
    for ((i=1; i<COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in
            {"|".join(subs) or "__none__"}) sub="${{COMP_WORDS[i]}}"; break ;;
        esac
    done
    case "$sub" in
{body}
        *) opts="{" ".join(top)} {" ".join(subs)}" ;;
    esac
    COMPREPLY=( $(compgen -W "$opts" -- "$cur") )
}}
"""
    if shell == "zsh":
        return (
            f"#compdef {prog}\nautoload -U +X bashcompinit && bashcompinit\n{bash}complete -F {func} {prog}\n"
        )
    return f"# bash completion for {prog}\n{bash}complete -F {func} {prog}\n"


def _q(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _fish_opt(opt: str) -> str:
    if opt.startswith("--"):
        return f"-l {opt[2:]}"
    return f"-s {opt[1:]}"
