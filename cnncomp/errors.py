"""Located errors: every user-facing failure names a file, line and column."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Loc:
    """A position in a .cnn source: file name, 1-based line and column."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class CallSite:
    """One link in a chain of block calls: which block was called, and where."""

    block: str
    loc: Loc


class CnnError(Exception):
    """An error in a user's spec, weights or command, with its source location."""

    def __init__(self, message: str, loc: Loc | None = None, chain: tuple[CallSite, ...] = (),
                 notes: tuple[str, ...] = ()):
        super().__init__(message)
        self.message = message
        self.loc = loc
        self.chain = tuple(chain)
        self.notes = tuple(notes)

    def with_location(self, loc: Loc, chain: tuple[CallSite, ...] = ()) -> "CnnError":
        """Return this error with a location, keeping one that is already set."""
        if self.loc is not None:
            return self
        return CnnError(self.message, loc, chain or self.chain, self.notes)

    def format(self, sources: "SourceCache | None" = None) -> str:
        """Render as `file:line:col: error: message`, the quoted line and a caret."""
        if self.loc is None:
            lines = [f"error: {self.message}"]
        else:
            lines = [f"{self.loc}: error: {self.message}"]
            lines += _quote(sources, self.loc)
        for site in reversed(self.chain):
            lines.append(f"  in block '{site.block}' called at {site.loc}")
            lines += ["  " + q for q in _quote(sources, site.loc)]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format(SOURCES)


class UsageError(CnnError):
    """Bad usage: an option out of its range, or naming something that is not there (the command line exits 2)."""
QUOTE_WIDTH = 200  # characters of a source line quoted around an error's caret


def _quote(sources: "SourceCache | None", loc: Loc) -> list[str]:
    if sources is None:
        return []
    text = sources.line(loc.file, loc.line)
    if text is None:
        return []
    caret_col = max(loc.col - 1, 0)
    start = 0
    if len(text) > QUOTE_WIDTH:  # quote a window around the caret, not a whole huge line
        start = max(0, min(caret_col - QUOTE_WIDTH // 2, len(text) - QUOTE_WIDTH))
    lead = "..." if start > 0 else ""
    trail = "..." if start + QUOTE_WIDTH < len(text) else ""
    shown = lead + text[start:start + QUOTE_WIDTH].expandtabs(4) + trail
    prefix = lead + text[start:caret_col].expandtabs(4)
    return ["    " + shown, "    " + " " * len(prefix) + "^"]


@dataclass
class SourceCache:
    """Source texts by file name, so that errors can quote the offending line."""

    texts: dict[str, list[str]] = field(default_factory=dict)

    def add(self, file: str, text: str) -> None:
        self.texts[file] = text.splitlines()

    def line(self, file: str, line: int) -> str | None:
        lines = self.texts.get(file)
        if lines is None or not 1 <= line <= len(lines):
            return None
        return lines[line - 1]


SOURCES = SourceCache()
