"""A full disk (or quota) during a run: one clear error instead of hundreds of tracebacks.

Orbax writes checkpoints from background threads; when the disk fills, each of its threads and asyncio
loops logs its own traceback (and later "Event loop is closed" ones), and the error reaches the loop
only at the next save. `DiskFullGuard` turns all of that into a single line, and `is_disk_full` lets
the trainer raise `DiskFullError`, which says what is kept and what to do.
"""
from __future__ import annotations

import errno
import logging
import sys
import threading

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_TEXT = ("No space left on device", "Disk quota exceeded")


class DiskFullError(OSError):
    """The output directory's file system is full."""


def is_disk_full(exc: BaseException | None) -> bool:
    """True if `exc` or an exception it was raised from / during is ENOSPC / EDQUOT (also TensorStore's
    errors, which carry the text only)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            return True
        if any(t in str(exc) for t in _TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class DiskFullGuard(logging.Filter):
    """Installed on the loggers Orbax / asyncio report through while a run is active: the first record
    about a full disk becomes one line on stderr; it and every later disk-full or "Event loop is closed"
    record (the aftermath) are dropped."""

    LOGGERS = ("absl", "asyncio", "orbax")

    def __init__(self, stream=None):
        super().__init__()
        self.seen = False
        self.stream = stream

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if any(t in text for t in _TEXT):
            self._report_once()
            return False
        exc = record.exc_info[1] if record.exc_info else None
        return not (self._aftermath(exc) or (self.seen and "Event loop is closed" in text))

    def _report_once(self) -> None:
        if not self.seen:
            print("ERROR: no space left on device while writing the run's files (Orbax's tracebacks "
                  "suppressed)", file=self.stream or sys.stderr, flush=True)
        self.seen = True

    def _aftermath(self, exc: BaseException | None) -> bool:
        """True for what to drop: a full-disk error, or once one was seen, "Event loop is closed"."""
        if is_disk_full(exc):
            self._report_once()
            return True
        return self.seen and exc is not None and "Event loop is closed" in str(exc)

    def _thread_excepthook(self, args) -> None:
        # a background thread dying of the full disk prints its traceback through threading.excepthook
        if not self._aftermath(args.exc_value):
            self._old_hook(args)

    def _unraisablehook(self, args) -> None:
        # Orbax's loops and futures torn down at interpreter exit (atexit, __del__) report here
        if not self._aftermath(args.exc_value):
            self._old_unraisable(args)

    def install(self) -> "DiskFullGuard":
        for name in self.LOGGERS:
            logging.getLogger(name).addFilter(self)
        self._old_hook, threading.excepthook = threading.excepthook, self._thread_excepthook
        self._old_unraisable, sys.unraisablehook = sys.unraisablehook, self._unraisablehook
        return self

    def remove(self) -> None:
        """Uninstall, unless the disk filled: then the aftermath (Orbax's threads and event loops shutting
        down, until the process exits) keeps being dropped."""
        if self.seen:
            return
        for name in self.LOGGERS:
            logging.getLogger(name).removeFilter(self)
        if threading.excepthook == self._thread_excepthook:
            threading.excepthook = self._old_hook
        if sys.unraisablehook == self._unraisablehook:
            sys.unraisablehook = self._old_unraisable
