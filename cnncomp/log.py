"""Messages for the user: a job says what it warns or notes through a `log` function it is given."""

from __future__ import annotations

from typing import Callable

Log = Callable[[str], None]  # takes one line of text, ending in a newline (the CLI passes sys.stderr.write)


def silent(text: str) -> None:
    """The default log: say nothing."""
