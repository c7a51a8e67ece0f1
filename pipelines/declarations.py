"""How a setting or job option is declared once, on its dataclass field, for every place that shows it.

A field declared with `option(...)` is a pipeline option (`ExportOptions`), a Flex Template parameter
(`templates/metadata.json`, written by `scripts/template_metadata.py`) and, if it says so, a CLI flag.
Beam-free: the control plane builds its CLI from these without importing Beam.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Optional

MISSING: Any = dataclasses.MISSING
_METADATA_KEY = "option"
_POSITIVE_INT = "^[1-9][0-9]*$"


@dataclasses.dataclass(frozen=True)
class Option:
    """One declared value: its name, type, default and help, and what the CLI and the template need."""

    help: str
    label: str  # the template parameter's label
    regex: str = ""  # the template's check of a value; positive ints, booleans and choices have theirs
    choices: tuple[str, ...] = ()
    positive: bool = False  # an int above 0 (the CLI refuses others)
    template_optional: Optional[bool] = None  # None: optional when it has a default
    # The CLI: `cli` makes it a flag of `export` and `serve`; the rest say where the flag differs.
    cli: bool = False
    flag: str = ""  # default --name-with-hyphens; a bool flag stores the opposite of the default
    cli_help: str = ""  # default: `help`, with the CLI default
    cli_default: Any = None  # None: the field's default; a flag without either is required
    duration: bool = False  # seconds, given as a duration such as 1h
    metavar: Optional[str] = None
    # Filled in from the field by `declared`.
    name: str = ""
    type: Any = str
    default: Any = None  # MISSING: none

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def on_cli_default(self) -> Any:
        """The CLI's default: a duration's in seconds, as `--help` shows it."""
        default = self.default if self.cli_default is None else self.cli_default
        return f"{default:g}s" if self.duration else default

    @property
    def cli_help_text(self) -> str:
        if self.cli_help:
            return self.cli_help
        shown = self.on_cli_default not in (MISSING, "", None) and self.type is not bool
        return f"{self.help} (default %(default)s)" if shown else self.help

    def template_parameter(self) -> dict[str, Any]:
        """This option as a Flex Template parameter."""
        optional = self.default is not MISSING if self.template_optional is None else self.template_optional
        regex = self.regex or _implied_regex(self)
        parameter: dict[str, Any] = {"name": self.name, "label": self.label, "helpText": self.help, "isOptional": optional}
        return {**parameter, "regexes": [regex]} if regex else parameter


def option(default: Any = MISSING, /, help: str = "", label: str = "", **details: Any) -> Any:
    """A dataclass field declared as an option (see `Option` for the details)."""
    return dataclasses.field(default=default, metadata={_METADATA_KEY: Option(help, label, **details)})


def declared(cls: type) -> tuple[Option, ...]:
    """The options declared on a dataclass's fields, in field order, each with its name, type and default."""
    hints = typing.get_type_hints(cls)
    return tuple(
        dataclasses.replace(f.metadata[_METADATA_KEY], name=f.name, type=hints[f.name], default=f.default)
        for f in dataclasses.fields(cls) if _METADATA_KEY in f.metadata
    )


def parse_bool(text: str) -> bool:
    """A boolean option's value: pipeline options carry booleans as "true" or "false"."""
    if text not in ("true", "false"):
        raise ValueError(f"expected true or false, not {text!r}")
    return text == "true"


def option_text(value: object) -> str:
    """A value as a pipeline option's text: what `parse_bool` and the other option types read back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _implied_regex(spec: Option) -> str:
    if spec.type is bool:
        return "^(true|false)$"
    if spec.choices:
        return f"^({'|'.join(spec.choices)})$"
    return _POSITIVE_INT if spec.positive else ""
