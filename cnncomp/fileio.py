"""Writing output files: one place decides where and how every output goes.

Every writer (compile, emit, init, run, verify --save-*, deploy, graph) goes through
`atomic_write`, so each output path gets the same treatment:

- a regular file is written through a temporary file in the same folder and renamed
  into place, so a failed write never leaves a half-written output behind;
- a symbolic link is written through (the file it points to is replaced; the link stays);
- a character device or FIFO (`/dev/stdout`, `/dev/null`, a named pipe) is written
  directly, never replaced by a regular file;
- `-` means standard output: text as it is, binary only when standard output is not a terminal;
- a missing folder, a path that is a folder, or a path that is one of the command's inputs
  (the spec, the weights) is a one-line error, before anything is written;
- a new file gets the mode `open()` would give it (0666 less the umask); a replaced file keeps its mode.

The inputs a command reads are noted with `note_input` while `guard_inputs()` is active
(the command line activates it around each command), so that no output overwrites one.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
from contextvars import ContextVar
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np

from cnncomp.errors import CnnError

STDOUT = "-"
STDOUT_NAMES = (STDOUT, "/dev/stdout", "/dev/fd/1", "/proc/self/fd/1")  # all written through sys.stdout


class OutputError(CnnError, OSError):
    """An output that cannot be written: a one-line CnnError that is also the OSError a writer would raise."""

    def __init__(self, message: str):
        CnnError.__init__(self, message)

    def __str__(self) -> str:
        return CnnError.__str__(self)

_inputs: ContextVar[set | None] = ContextVar("cnncomp_inputs", default=None)
_stdout: ContextVar = ContextVar("cnncomp_stdout", default=None)


# ---- inputs that outputs must not overwrite ----------------------------------------------


@contextlib.contextmanager
def guard_inputs(paths=()) -> Iterator[None]:
    """While active, `note_input` records the files read, and writing to one of them is an error."""
    token = _inputs.set(set())
    try:
        for p in paths:
            note_input(p)
        yield
    finally:
        _inputs.reset(token)


def note_input(path) -> None:
    """Record that `path` is an input of the running command (no effect outside `guard_inputs`)."""
    seen = _inputs.get()
    if seen is None or path is None or is_stdout(path):
        return
    seen.update(_identities(path))


def _identities(path) -> set:
    """The resolved path and, for an existing file, its (device, inode): a hard link is the same file."""
    out: set = set()
    try:
        out.add(os.path.realpath(path))
        info = os.stat(path)
        out.add((info.st_dev, info.st_ino))
    except (OSError, ValueError):
        out.add(str(path))
    return out


# ---- standard output ---------------------------------------------------------------------


@contextlib.contextmanager
def stdout_reserved_for_output() -> Iterator[None]:
    """For `-o -`: the output goes to the real standard output; everything else printed goes to stderr."""
    real = sys.stdout
    token = _stdout.set(real)
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stdout = real
        _stdout.reset(token)


def is_stdout(path) -> bool:
    """`-` or a name of standard output: written through sys.stdout, so that it mixes with nothing else."""
    return str(path) in STDOUT_NAMES


def _stdout_stream():
    reserved = _stdout.get()
    return reserved if reserved is not None else sys.stdout


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


# ---- checking an output path -------------------------------------------------------------


def check_output_path(path, binary: bool = True) -> None:
    """Raise a one-line CnnError when `path` cannot be an output (see the module docstring)."""
    text = str(path)
    if is_stdout(text):
        if binary and _isatty(_stdout_stream()):
            raise OutputError("not writing binary output to a terminal: give -o FILE, or pipe standard output")
        return
    if not text:
        raise OutputError("the output path is empty")
    p = Path(text)
    if p.is_dir():
        raise OutputError(f"cannot write '{text}': it is a folder; give a file name")
    seen = _inputs.get()
    if seen and _identities(p) & seen:
        raise OutputError(f"cannot write '{text}': it is an input of this command; choose another output name")
    if _written_directly(p):
        return
    target = Path(os.path.realpath(p))
    folder = target.parent
    if not folder.is_dir():
        shown = p.parent if not p.is_symlink() else folder
        raise OutputError(f"cannot write '{text}': the folder '{shown}' does not exist")


def refuse_derived_output(path, what: str, flag: str) -> None:
    """Refuse to name a second output after PATH when PATH is standard output or a device (`-o -` would
    write `./-.safetensors`, `-o /dev/null` a file `/dev/null.safetensors`)."""
    text = str(path)
    if is_stdout(text) or _written_directly(Path(text)) or text.startswith(("/dev/", "/proc/")):
        raise OutputError(f"-o {text}: {what} cannot be named after standard output or a device; "
                          f"give {flag}")


def _written_directly(path: Path) -> bool:
    """A character device, FIFO or socket (after links: /dev/stdout may be a pipe), or a path under
    /dev or /proc (/dev/stdout redirected to a file: the shell holds that file open)."""
    if str(path).startswith(("/dev/", "/proc/")) and path.exists():
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


# ---- writing -----------------------------------------------------------------------------


def atomic_write(path: str | Path, write: Callable[[str], None], binary: bool = True) -> None:
    """Write an output through `write(filename)`: atomically for a regular file, directly for a device
    or FIFO, through a symbolic link, or to standard output for `-`. OS errors become one-line CnnErrors."""
    check_output_path(path, binary)
    text = str(path)
    try:
        if is_stdout(text):
            _write_to_stdout(write, binary)
            return
        if _written_directly(Path(text)):
            write(text)
            return
        _replace_atomically(Path(os.path.realpath(text)), write)
    except CnnError:
        raise
    except OSError as e:
        raise OutputError(f"cannot write '{text}': {e.strerror or e}") from None


def atomic_write_with(path: str | Path, write: Callable[[str], None], other: Callable[[], None],
                      binary: bool = True) -> None:
    """Write an output that goes with another: `write(tmp)` fills a temporary, `other()` writes the other
    output, and only then does the temporary take PATH's place. When either fails, PATH is as it was: an
    existing file is neither replaced nor removed (`import` writes weights with its spec this way)."""
    check_output_path(path, binary)
    text = str(path)
    direct = is_stdout(text) or _written_directly(Path(text))
    target = Path(os.path.realpath(text))
    with contextlib.ExitStack() as stack:
        if direct:  # a device or standard output: stage in a private folder, copy at the end
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cnncomp-"))) / "output"
        else:
            tmp = temporary_name(target.parent, target.name)
            stack.enter_context(removed_on_termination(tmp))
        try:
            write(str(tmp))
            other()
            if direct:
                atomic_write(text, lambda out: shutil.copyfile(tmp, out), binary)
            else:
                atomic_write(text, lambda out: os.replace(tmp, out), binary)
        except OSError as e:
            raise OutputError(f"cannot write '{text}': {e.strerror or e}") from None
        finally:
            if not direct and os.path.exists(tmp):
                os.unlink(tmp)


def _replace_atomically(target: Path, write: Callable[[str], None]) -> None:
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        mode = _new_file_mode()
    remove_stale_temporaries(target.parent, target.name)
    tmp = str(temporary_name(target.parent, target.name))
    try:
        with removed_on_termination(tmp):
            write(tmp)
            os.chmod(tmp, mode)  # some writers (safetensors) create 0600 files
            os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ---- temporaries -------------------------------------------------------------------------

_TEMPORARY = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp")
_TERMINATION_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))
_temporaries: set[str] = set()
_previous_handlers: dict = {}


def temporary_name(folder: Path, name: str) -> Path:
    """`FOLDER/.NAME.PID.HEX.tmp`: hidden, this process's, and never an existing file."""
    return folder / f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


STALE_SECONDS = 600  # a temporary untouched this long, whose process is gone, was left by a kill


def remove_stale_temporaries(folder: Path, name: str) -> None:
    """Remove what a killed cnncomp left of an earlier write of NAME (kill -9 runs no clean-up): the
    temporaries of NAME whose writing process no longer exists here and that nothing has written to for
    STALE_SECONDS (on a shared file system the writer may be another machine's process, still writing)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        match = _TEMPORARY.fullmatch(entry.name)
        if not match or match["name"] != name or _alive(int(match["pid"])):
            continue
        with contextlib.suppress(OSError):
            if time.time() - entry.stat(follow_symlinks=False).st_mtime < STALE_SECONDS:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


@contextlib.contextmanager
def removed_on_termination(path) -> Iterator[None]:
    """While active, SIGTERM or SIGHUP first removes `path` (a file or a folder), then ends the process
    as the signal would have. (SIGINT raises KeyboardInterrupt, which every writer's clean-up handles.)"""
    path = str(path)
    if not _temporaries:
        _install_handlers()
    _temporaries.add(path)
    try:
        yield
    finally:
        _temporaries.discard(path)
        if not _temporaries:
            _restore_handlers()


def _install_handlers() -> None:
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread
    for sig in _TERMINATION_SIGNALS:
        current = signal.getsignal(sig)
        if current in (signal.SIG_IGN, None) or current is _on_termination:
            continue
        _previous_handlers[sig] = current
        signal.signal(sig, _on_termination)


def _restore_handlers() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, previous in list(_previous_handlers.items()):
        signal.signal(sig, previous)
        del _previous_handlers[sig]


def _on_termination(signum, frame) -> None:
    for path in list(_temporaries):
        with contextlib.suppress(OSError):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.unlink(path)
    _temporaries.clear()
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    _restore_handlers()
    if callable(previous):
        previous(signum, frame)
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)  # end as the signal would have: the status says which signal


def _write_to_stdout(write: Callable[[str], None], binary: bool) -> None:
    stream = _stdout_stream()
    with tempfile.TemporaryDirectory(prefix="cnncomp-") as folder:
        tmp = os.path.join(folder, "output")
        write(tmp)
        if binary:
            stream.flush()
            with open(tmp, "rb") as f:
                shutil.copyfileobj(f, stream.buffer)
            stream.buffer.flush()
        else:
            with open(tmp, encoding="utf-8") as f:
                stream.write(f.read())
            stream.flush()


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically (UTF-8); `-` prints it."""
    if is_stdout(path):
        check_output_path(path, binary=False)
        stream = _stdout_stream()
        stream.write(text)
        stream.flush()
        return

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write, binary=False)


def save_arrays(path: str | Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Save arrays atomically: one array to .npy, otherwise (or for .npz) keyed by name to .npz."""

    if str(path).endswith(".npy") and len(arrays) != 1:
        raise OutputError(f"cannot write '{path}': a .npy holds one array, and there are {len(arrays)} "
                       f"({', '.join(arrays)}); name it .npz")

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            if str(path).endswith(".npy"):
                np.save(f, next(iter(arrays.values())))
            else:
                np.savez(f, **arrays)

    atomic_write(path, write)
