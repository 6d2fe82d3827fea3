"""One declaration per option: its name, type, default, help, validation and the commands that take it.

The command line's flags and the Python API's keyword arguments are both derived from these
declarations (`cnncomp/job.py` lists them; precisions and runtimes declare their own), so the two
doors have the same names, the same defaults, and the same error for a bad value:

    Option("max_error", float, DEFAULT, "relative L2 error budget ...", ("compile", "verify", "deploy"),
           check=positive_finite, metavar="E")

gives `--max-error E` (argparse dest `max_error`) and the keyword `max_error=`. A value from either
door goes through `Option.value` (text from the command line is parsed first with `parse`), which
raises UsageError naming the flag.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from typing import Callable

from cnncomp.errors import UsageError


@dataclass(frozen=True)
class Option:
    """One option of one or more commands.

    name      the API keyword and the argparse dest; the flag is --name with dashes (or `flags`)
    type      what argparse converts the text with (int, float, str); None for a switch
    default   the default of both doors (`overrides` may change it for one command)
    help      the --help text, without the default (added from `default`)
    commands  the commands that take it
    check     a value -> the problem with it in words ("takes 1 or more, got 0"), or None
    parse     command-line text (or the list an `append` option collects) -> the value the API takes
    choices   allowed values: a tuple, or a function returning one (a registry's names)
    aliases   other spellings, kept working on both doors (--provider for --runtime)
    group     the part of the job description it belongs to: source, optimize, precision, check, output
    overrides per command, fields that differ there: {"serve": {"default": None, "help": ...}}
    """

    name: str
    type: Callable | None
    default: object
    help: str
    commands: tuple[str, ...]
    check: Callable[[object], str | None] | None = None
    parse: Callable | None = None
    choices: tuple | Callable | None = None
    aliases: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    metavar: str | None = None
    action: str = "store"  # store, store_true, append
    group: str = "check"
    required: bool = False
    overrides: dict = field(default_factory=dict)

    @property
    def flag(self) -> str:
        return self.flags[-1] if self.flags else "--" + self.name.replace("_", "-")

    def for_command(self, command: str) -> "Option":
        """This option as `command` has it (its overrides applied)."""
        from dataclasses import replace

        extra = self.overrides.get(command)
        return replace(self, overrides={}, **extra) if extra else self

    def allowed(self) -> tuple | None:
        return self.choices() if callable(self.choices) else self.choices

    def value(self, given, from_text: bool = False):
        """The value given (text from the command line when `from_text`), parsed and checked;
        a bad one is a UsageError that names the flag."""
        if given is None:
            return None
        if from_text and self.parse is not None:
            given = self.parse(given, self.flag)
        if self.type in (int, float) and self.parse is None and \
                (isinstance(given, bool) or not isinstance(given, (int, float))):
            raise UsageError(f"{self.flag} takes {'an integer' if self.type is int else 'a number'}, got {given!r}")
        allowed = self.allowed()
        if allowed is not None and given not in allowed:
            raise UsageError(f"{self.flag}: unknown {self.name.replace('_', ' ')} '{given}'; known: "
                             f"{', '.join(map(str, allowed))}")
        if self.check is not None:
            problem = self.check(given)
            if problem:
                raise UsageError(f"{self.flag} {problem}")
        return given

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        """The flag, as argparse takes it: the value stays as text (or None when not given) so that
        `value` parses and checks it the same way for both doors."""
        spellings = list(self.flags) if self.flags else [self.flag]
        spellings += ["--" + a.replace("_", "-") for a in self.aliases]
        kwargs: dict = {"dest": self.name, "help": self._help()}
        if self.action == "store_true":
            kwargs.update(action="store_true", default=self.default)
        else:
            kwargs.update(action=self.action, default=None, metavar=self.metavar, required=self.required)
            if self.type is not None and self.parse is None:
                kwargs["type"] = self.type
            allowed = self.allowed()
            if allowed is not None and self.metavar is None:  # checked by `value`, with the API's message
                kwargs["metavar"] = "{" + ",".join(map(str, allowed)) + "}"
        parser.add_argument(*spellings, **kwargs)

    def _help(self) -> str:
        if self.action == "store_true" or self.default in (None, {}) or "(default" in self.help:
            return self.help
        shown = ",".join(map(str, self.default)) if isinstance(self.default, tuple) else self.default
        return f"{self.help} (default {shown})"


# ---- checks: a value -> the problem with it, or None -------------------------------------------------


def at_least(low: int) -> Callable[[object], str | None]:
    def check(value):
        return None if value >= low else f"takes {low} or more, got {value}"
    return check


def positive_finite(value) -> str | None:
    return None if 0 < value < math.inf else f"takes a number greater than 0 and finite, got {value:g}"


def port(value) -> str | None:
    return None if 0 < value < 65536 else f"takes a port from 1 to 65535, got {value}"
