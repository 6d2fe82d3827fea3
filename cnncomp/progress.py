"""A tiny progress bar on standard error, for long work (per-layer checks, autotuning, benchmarks).

    from cnncomp.progress import progress
    for layer in progress(layers, label="verify"):
        ...

It draws only when standard error is a terminal (never into logs, pipes,
test output or `--json` standard output), and not when CNNCOMP_NO_PROGRESS is
set, TERM is "dumb" or `silenced()` is active (the command line's `--quiet`).
Only the outermost loop draws: a reference run inside the -O3 search shows the
search's bar, not its own. It redraws at most every 0.1 s, shows the time spent
and the time left, and erases itself when the loop ends, however it ends, so
the lines printed after it stay clean.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from contextvars import ContextVar
from typing import Iterable, Iterator, TextIO, TypeVar

T = TypeVar("T")
WIDTH = 24  # characters of bar
MIN_INTERVAL = 0.1  # seconds between redraws
_silenced: ContextVar[bool] = ContextVar("cnncomp_progress_silenced", default=False)
_drawing = [False]  # a bar is on screen (a module flag: a generator may be closed from another context)


@contextlib.contextmanager
def silenced(quiet: bool = True):
    """No progress is drawn while active (when `quiet`)."""
    token = _silenced.set(quiet or _silenced.get())
    try:
        yield
    finally:
        _silenced.reset(token)


def enabled(stream: TextIO | None = None) -> bool:
    """Whether a bar would be drawn on this stream (standard error by default)."""
    stream = stream if stream is not None else sys.stderr
    if _silenced.get() or os.environ.get("CNNCOMP_NO_PROGRESS") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a file
        return False


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else \
        f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def format_bar(done: int, total: int | None, label: str = "", elapsed: float = 0.0) -> str:
    """One line of progress: `label [#####.....] 12/50 0:03<0:09`, or `label 12 0:03` without a total."""
    head = f"{label} " if label else ""
    if not total:
        return f"{head}{done} {_clock(elapsed)}"
    frac = min(max(done / total, 0.0), 1.0)
    filled = int(frac * WIDTH)
    eta = elapsed / done * (total - done) if done else 0.0
    return f"{head}[{'#' * filled}{'.' * (WIDTH - filled)}] {done}/{total} {_clock(elapsed)}<{_clock(eta)}"


def progress(iterable: Iterable[T], total: int | None = None, label: str = "",
             stream: TextIO | None = None) -> Iterator[T]:
    """Yield the items of `iterable`, drawing a bar on standard error when it is a terminal."""
    stream = stream if stream is not None else sys.stderr
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if _drawing[0] or not enabled(stream):  # an inner loop stays silent under an outer bar
        yield from iterable
        return
    _drawing[0] = True
    start = last = time.monotonic()
    done = 0
    width = 0

    def draw(now: float) -> None:
        nonlocal width
        text = format_bar(done, total, label, now - start)
        stream.write("\r" + text + " " * max(width - len(text), 0))
        stream.flush()
        width = len(text)

    try:
        draw(start)
        for item in iterable:
            yield item
            done += 1
            now = time.monotonic()
            if now - last >= MIN_INTERVAL or done == total:
                draw(now)
                last = now
    finally:
        _drawing[0] = False
        stream.write("\r" + " " * width + "\r")
        stream.flush()
