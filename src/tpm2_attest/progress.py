"""Progress on a terminal for TPM commands that can take seconds (key creation on real TPMs).

A hardware TPM needs seconds to create an RSA key (TPM2_CreatePrimary of an RSA EK or SRK,
TPM2_Create of an RSA AK): long enough that a silent command line looks hung. ``Progress`` is an
``on_command`` hook for :meth:`Tpm.open <tpm2_attest.tpm.Tpm.open>`: when a slow command starts
and is still running after ``delay`` seconds, it draws a one-line spinner on the terminal, and
erases it when the next command starts (every key creation is followed by one: the key is
loaded, certified or flushed) or when the process exits. It writes nothing unless its stream is
a terminal, so piped and redirected output stays clean; :func:`terminal_progress` returns None
in that case and the hook costs nothing.
"""

from __future__ import annotations

import atexit
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final, TextIO

SLOW_COMMANDS: Final[dict[str, str]] = {
    "TPM2_CreatePrimary": "creating a primary key (EK/SRK) in the TPM",
    "TPM2_Create": "creating a key in the TPM",
    "TPM2_CreateLoaded": "creating a key in the TPM",
}
"""Commands worth a progress line, and what to say while they run."""
DEFAULT_DELAY: Final = 0.3
"""Seconds a slow command may run before the line appears (swtpm and fast TPMs show nothing)."""
ERASE: Final = "" if sys.platform == "win32" else "\x1b[K"
"""ANSI erase-to-end-of-line; on Windows (whose legacy console prints escape codes literally)
the line is blanked with spaces instead."""
FRAMES: Final = "|/-\\"
TICK: Final = 0.1


class Progress:
    """An ``on_command`` hook drawing ``|/-\\ creating a key in the TPM (1.4 s)`` on ``stream``."""

    def __init__(self, stream: TextIO | None = None, *, delay: float = DEFAULT_DELAY,
                 force: bool = False) -> None:
        """``stream`` defaults to stderr; ``force`` draws even when it is not a terminal."""
        self.stream = stream if stream is not None else sys.stderr
        self.delay = delay
        self.enabled = force or _isatty(self.stream)
        self._cond = threading.Condition()
        self._label: str | None = None
        self._started = 0.0
        self._generation = 0
        self._drawn = False
        self._width = 0
        self._thread: threading.Thread | None = None
        self._closed = False
        if self.enabled:
            atexit.register(self.close)

    def __call__(self, command: str) -> None:
        """Called by the command layer before each TPM command is sent."""
        if not self.enabled:
            return
        label = SLOW_COMMANDS.get(command)
        with self._cond:
            self._clear_locked()
            self._generation += 1
            self._label = f"{label} ({command})" if label else None
            self._started = time.monotonic()
            if self._label is not None and not self._closed:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="tpm2-attest-progress",
                                                    daemon=True)
                    self._thread.start()
                self._cond.notify_all()

    @contextmanager
    def activity(self, label: str) -> Iterator[None]:
        """Show ``label`` while the block runs longer than ``delay``: for slow work the hook
        cannot see (Windows PCP creates its keys inside the provider, not through our TBS
        context). Commands sent meanwhile take the line over, as usual."""
        if not self.enabled:
            yield
            return
        with self._cond:
            self._clear_locked()
            self._generation += 1
            self._label = label
            self._started = time.monotonic()
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="tpm2-attest-progress",
                                                daemon=True)
                self._thread.start()
            self._cond.notify_all()
        try:
            yield
        finally:
            self.done()

    def done(self) -> None:
        """Erase the line now (the operation finished without a further command)."""
        with self._cond:
            self._clear_locked()
            self._label = None
            self._generation += 1
            self._cond.notify_all()

    def close(self) -> None:
        """Erase the line and stop the drawing thread; idempotent."""
        with self._cond:
            self._clear_locked()
            self._label = None
            self._closed = True
            self._cond.notify_all()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=1.0)

    # -- drawing ------------------------------------------------------------------------------

    def _run(self) -> None:
        frame = 0
        with self._cond:
            while not self._closed:
                if self._label is None:
                    self._cond.wait()
                    continue
                generation = self._generation
                remaining = self._started + self.delay - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                elapsed = time.monotonic() - self._started
                line = f"{FRAMES[frame % len(FRAMES)]} {self._label}... {elapsed:.1f} s"
                self._write(f"\r{line}{ERASE}" if ERASE else f"\r{line.ljust(self._width)}")
                self._width = max(self._width, len(line))
                self._drawn = True
                frame += 1
                deadline = time.monotonic() + TICK
                while self._generation == generation and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)

    def _clear_locked(self) -> None:
        if self._drawn:
            self._write(f"\r{ERASE}" if ERASE else f"\r{' ' * self._width}\r")
            self._drawn = False

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: stop drawing, never fail
            self.enabled = False


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def terminal_progress(stream: TextIO | None = None) -> Progress | None:
    """A :class:`Progress` hook when ``stream`` (default stderr) is a terminal, else None."""
    target = stream if stream is not None else sys.stderr
    return Progress(target) if _isatty(target) else None


__all__ = ["DEFAULT_DELAY", "SLOW_COMMANDS", "Progress", "terminal_progress"]
