"""Outputs that are either complete or absent: temporary file + rename, signals, closed pipes.

`atomic_output(path)` writes into a hidden temporary file in the destination's directory (same
file system, so `os.replace` is atomic) and renames it over `path` only when the block finishes
without an exception. On any exception, including KeyboardInterrupt and the SystemExit/
KeyboardInterrupt raised by `handle_termination_signals`, the temporary file is removed and an
existing file of that name is left exactly as it was. "-" means stdout, written directly.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import sys
import tempfile
from typing import Iterator

from titans_cli.errors import TitansInputError

STDOUT = "-"


def _check_destination(path: str) -> str:
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise TitansInputError(f"{path}: is a directory, cannot write output there")
    if not os.path.isdir(directory):
        raise TitansInputError(f"{path}: cannot write: directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise TitansInputError(f"{path}: cannot write: directory {directory} is not writable")
    return directory


def _final_mode(path: str) -> int:
    """Keep an existing file's permissions; new files get the usual 0666 minus umask."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path to write (for libraries that want a file name, e.g. pyBigWig).

    The file at the temporary path replaces `path` when the block succeeds. For "-", the
    temporary file's bytes are copied to stdout at the end and the file is removed.
    """
    if path == STDOUT:
        handle, temporary = tempfile.mkstemp(prefix="titans-", suffix=suffix)
        os.close(handle)
        try:
            yield temporary
            with open(temporary, "rb") as finished:
                sys.stdout.flush()
                shutil.copyfileobj(finished, sys.stdout.buffer, 1 << 20)
                sys.stdout.buffer.flush()
        finally:
            _remove_quietly(temporary)
        return
    directory = _check_destination(path)
    name = os.path.basename(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=f".titans-tmp{suffix}", dir=directory)
    os.close(handle)
    try:
        yield temporary
        os.chmod(temporary, _final_mode(path))
        os.replace(temporary, path)
    except BaseException:
        _remove_quietly(temporary)
        raise


@contextlib.contextmanager
def atomic_output(path: str, mode: str = "w", encoding: str = "utf-8", newline: str | None = "\n"):
    """Open `path` for writing ("w" text or "wb" binary) so it appears only when complete.

    "-" yields stdout (its text or binary layer); stdout itself is flushed, never closed.
    """
    if mode not in ("w", "wb"):
        raise ValueError("mode must be 'w' or 'wb'")
    if path == STDOUT:
        if mode == "wb":
            stream = sys.stdout.buffer
            yield stream
            stream.flush()
        else:
            yield sys.stdout
            sys.stdout.flush()
        return
    with atomic_path(path) as temporary:
        if mode == "wb":
            handle = open(temporary, "wb")
        else:
            handle = open(temporary, "w", encoding=encoding, newline=newline)
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())  # the rename must not land before the data on a crash


class AtomicWriter:
    """An output made of atomic files and temporaries held in one ExitStack (the base of the track
    and embedding writers). `close()` runs the subclass's `_finish()` and moves every file into
    place; an exception inside the `with` block, or `abort()`, discards them all and keeps any
    previous file of the same name."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._closed = False

    def _finish(self) -> None:
        """Write what is still buffered (subclasses)."""

    def close(self) -> None:
        """Finish the output and move it into place."""
        if self._closed:
            return
        self._closed = True
        try:
            self._finish()
        except BaseException as error:
            self._stack.__exit__(type(error), error, error.__traceback__)
            raise
        self._stack.close()

    def abort(self, error: BaseException | None = None) -> None:
        """Discard the output (temporary files removed, a previous file kept)."""
        if self._closed:
            return
        self._closed = True
        failure = error if error is not None else RuntimeError(f"writing {type(self).__name__} aborted")
        with contextlib.suppress(BaseException):
            self._stack.__exit__(type(failure), failure, failure.__traceback__)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()
        else:
            self.abort(exc)


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


class TerminatedBySignal(KeyboardInterrupt):
    """Raised in the main thread when SIGTERM/SIGHUP arrives, so `finally` blocks clean up."""

    def __init__(self, signal_number: int):
        super().__init__(f"terminated by {signal.Signals(signal_number).name}")
        self.signal_number = signal_number


def _raise_terminated(signal_number, _frame) -> None:
    raise TerminatedBySignal(signal_number)


@contextlib.contextmanager
def handle_termination_signals(signals=(signal.SIGTERM, signal.SIGHUP)):
    """Within the block, SIGTERM and SIGHUP raise TerminatedBySignal like Ctrl-C raises
    KeyboardInterrupt, so atomic outputs remove their temporary files. Handlers are restored
    afterwards. (SIGKILL cannot be caught: a `.NAME.*.titans-tmp` file may then remain.)
    """
    previous = {}
    for number in signals:
        with contextlib.suppress(ValueError, OSError):  # not main thread / unsupported signal
            previous[number] = signal.signal(number, _raise_terminated)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def silence_stdout_after_broken_pipe() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not print a traceback.

    Python flushes sys.stdout at exit; after the reader of a pipe has gone (`| head`), that
    flush raises BrokenPipeError again and prints "Exception ignored ..." (Python docs, signal
    module, "Note on SIGPIPE").
    """
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def is_broken_pipe(error: BaseException) -> bool:
    return isinstance(error, BrokenPipeError) or (
        isinstance(error, OSError) and error.errno == errno.EPIPE
    )


@contextlib.contextmanager
def quiet_broken_pipe(exit_code: int = 0):
    """Turn a closed stdout pipe into a quiet SystemExit(exit_code), as `head` users expect."""
    try:
        yield
    except (BrokenPipeError, OSError) as error:
        if not is_broken_pipe(error):
            raise
        silence_stdout_after_broken_pipe()
        raise SystemExit(exit_code) from None

