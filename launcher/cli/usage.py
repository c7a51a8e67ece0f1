"""Usage errors in one line: argparse's own messages without internal names, and options nobody knows.

An option the command line does not declare is passed to Beam only when a
registered Beam pipeline option takes it (`pipelines.options.unknown_beam_args`);
anything else is refused, with the closest known option as a suggestion.
"""

from __future__ import annotations

import argparse
import difflib
import re
from typing import Iterable, Optional, Sequence

# The commands whose unknown options are Beam pipeline options (`--runner`, `--direct_num_workers`, ...).
RUNNER_COMMANDS = frozenset({"export", "serve", "resume", "publish"})

_ARGUMENT = re.compile(r"argument (?P<name>[^:]+): (?P<text>.*)\Z", re.DOTALL)
_REQUIRED = "the following arguments are required: "
_INVALID_VALUE = re.compile(r"invalid (?P<type>\w+) value: (?P<value>.*)\Z")
_INVALID_CHOICE = re.compile(r"invalid choice: (?P<value>'[^']*') \(choose from (?P<choices>.*)\)\Z")
_KINDS = {"int": "an integer", "float": "a number"}


def one_line(parser: argparse.ArgumentParser, message: str) -> str:
    """An argparse error of `parser` as one line, with a pointer to its `--help`."""
    return f"{parser.prog}: {_reworded(parser, message)} (see {parser.prog} --help)"


def unknown_option(parser: argparse.ArgumentParser, extras: Sequence[str], command: Optional[str]) -> Optional[str]:
    """The message refusing the first of `extras` (what argparse left) that no option takes, or None."""
    beam_names: Iterable[str] = ()
    unknown = list(extras)
    if command in RUNNER_COMMANDS and unknown:
        from pipelines.options import unknown_beam_args  # imports Beam: only when there is something to ask it

        unknown, beam_names = unknown_beam_args(unknown)
    flags = [arg for arg in unknown if arg.startswith("-")]
    if not flags:
        return f"unexpected argument {unknown[0]!r}" if unknown else None
    name = flags[0].split("=", 1)[0]
    ours = [s for action in parser._actions for s in action.option_strings if s.startswith("--")]
    guess = difflib.get_close_matches(name, ours, n=1) or difflib.get_close_matches(name, list(beam_names), n=1)
    return f"unknown option {name}" + (f"; did you mean {guess[0]}?" if guess else "")


def relaxed(parser: argparse.ArgumentParser) -> None:
    """Makes every argument of `parser` optional, so a line missing one can still be read for unknown options
    (`--sourse x` is a typo, not a missing `--source`)."""
    for action in parser._actions:
        action.required = False
    for group in parser._mutually_exclusive_groups:
        group.required = False


def _reworded(parser: argparse.ArgumentParser, message: str) -> str:
    if message.startswith(_REQUIRED):
        names = message[len(_REQUIRED):].split(", ")
        return f"{' and '.join(names)} {'is' if len(names) == 1 else 'are'} required"
    argument = _ARGUMENT.match(message)
    if not argument:
        return message
    name, text = argument["name"].split("/")[-1], argument["text"]
    choice = _INVALID_CHOICE.match(text)
    if choice and _is_command(parser, argument["name"]):
        guess = difflib.get_close_matches(choice["value"].strip("'"), _names(choice["choices"]), n=1)
        return f"unknown command {choice['value']}" + (f"; did you mean {guess[0]}?" if guess else "")
    if choice:
        return f"{name} expects one of {', '.join(_names(choice['choices']))}, got {choice['value']}"
    value = _INVALID_VALUE.match(text)
    if value:
        return f"{name} expects {_KINDS.get(value['type'], 'another value')}, got {value['value']}"
    return text if text.startswith(name) else f"{name} {text}"


def _is_command(parser: argparse.ArgumentParser, name: str) -> bool:
    return any(isinstance(a, argparse._SubParsersAction) and name in (a.dest, a.metavar) for a in parser._actions)


def _names(choices: str) -> list[str]:
    return [c.strip().strip("'") for c in choices.split(",")]
