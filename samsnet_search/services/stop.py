"""A driver that stops when told (docs/architecture.md, "A driver that stops when told").

SIGINT (Ctrl-C), SIGTERM (what Kubernetes, Slurm and spot reclaims send) and SIGHUP (a closed
terminal or ssh session) end a study alike: state `interrupted`, resumable, exit code 128 + the
signal's number. `watch()` installs one handler for the three for the whole study.

The handler records the first signal before it raises `Interrupted` (a KeyboardInterrupt, so no
`except Exception` stops it). The record is what makes a stop reliable: a library that swallows
the exception on its way up (a blocking call that polls for signals and drops what it polled,
a retry loop around a network call) cannot lose the stop, because the driver looks at the record
at every phase boundary and in its wait loops (`check()`).

During Tune's `fit` (`tune_loop()`) a first signal asks Tune to end its loop and save its state,
through Tune's public SIGUSR1 handler; a second one raises at once, as Tune's own Ctrl-C does.

Ray's core worker installs a C-level SIGTERM handler (abseil's, which dumps and aborts with exit
134) at every `ray.init`, and `ray.shutdown` leaves SIGTERM at its default (the process dies),
both behind Python's back (`signal.getsignal` still names ours): `reinstall()` after each puts
ours back.

`phase(name)` marks the driver's phases. For fault-injection tests, `SAMSNET_PAUSE_AT=name[,name]`
makes the driver print `paused at NAME` there and wait (at most `PAUSE_MAX_S`) for a stop: a test
then signals a known phase instead of guessing one by timing.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PAUSE_ENV = "SAMSNET_PAUSE_AT"
PAUSE_MAX_S = 300.0
_TUNE_ENV = "TUNE_DISABLE_SIGINT_HANDLER"  # ours handles Ctrl-C; Tune is asked through SIGUSR1


class Interrupted(KeyboardInterrupt):
    """The driver was told to stop (`signum`): the study ends as interrupted, resumable."""

    def __init__(self, signum: int, reason: str = "") -> None:
        super().__init__(reason or signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class Fenced(KeyboardInterrupt):
    """This driver no longer owns its study (another driver took its lease over): it stops at
    once and writes nothing more, not even its own state (a KeyboardInterrupt: nothing that
    catches Exception, Tune's loop included, writes on its way out)."""


class _State:
    def __init__(self) -> None:
        self.depth = 0  # nested watch() blocks: the outermost installs and restores
        self.signum: int | None = None
        self.in_tune = False
        self.previous: dict[int, object] = {}
        self.fences: list[Callable[[], None]] = []
        self.fenced: str | None = None  # why this driver lost its study


_state = _State()


def _on_signal(signum: int, frame) -> None:
    if _state.fenced is not None:  # fence_lost() interrupted the main thread
        raise Fenced(_state.fenced)
    first = _state.signum is None
    if first:
        _state.signum = signum
    if first and _state.in_tune and callable(signal.getsignal(signal.SIGUSR1)):  # Tune's loop runs
        log.warning("%s received: ending the search (again to stop at once)", signal.Signals(signum).name)
        os.kill(os.getpid(), signal.SIGUSR1)  # Tune ends its loop and writes its state
        return
    raise Interrupted(_state.signum)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def watch() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP stop the block (re-entrant; outside the main thread: a no-op)."""
    if not _main_thread():
        yield
        return
    if _state.depth == 0:
        _state.signum, _state.fenced = None, None
        _state.previous = {s: signal.signal(s, _on_signal) for s in SIGNALS}
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1
        if _state.depth == 0:
            for s, handler in _state.previous.items():
                signal.signal(s, handler)
            _state.fences.clear()


def reinstall() -> None:
    """Ours again after something (ray.init) replaced the process's C-level handlers."""
    if _state.depth and _main_thread():
        for s in SIGNALS:
            signal.signal(s, _on_signal)


def requested() -> int | None:
    """The signal that asked this driver to stop, or None."""
    return _state.signum


def check() -> None:
    """Raise `Interrupted` if a stop was asked for (even if its exception was swallowed), and
    run the fences (a driver that lost its study raises `Fenced` there)."""
    check_fences()
    if _state.signum is not None:
        raise Interrupted(_state.signum)


def fenced() -> bool:
    """Whether this driver lost its study. Ask this where a KeyboardInterrupt is caught: Ray's
    blocking calls turn an exception raised by a signal handler into a plain KeyboardInterrupt."""
    return _state.fenced is not None


def fence_reason() -> str:
    return _state.fenced or ""


def check_fences() -> None:
    """Raise `Fenced` if this driver lost its study (checked before it writes)."""
    if _state.fenced is not None:
        raise Fenced(_state.fenced)
    for fence in list(_state.fences):
        fence()


def fence_lost(reason: str) -> None:
    """From any thread: this driver lost its study; its main thread raises `Fenced` now."""
    _state.fenced = reason
    if _state.depth:
        # to the main thread itself: a blocking call there wakes up (EINTR) and _on_signal raises
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)


@contextmanager
def fence(check_owner: Callable[[], None]) -> Iterator[None]:
    """`check_owner` (raising when this driver no longer owns its study) runs at every `check()`."""
    _state.fences.append(check_owner)
    try:
        yield
    finally:
        if check_owner in _state.fences:
            _state.fences.remove(check_owner)


@contextmanager
def tune_loop() -> Iterator[None]:
    """Around Tune's `fit`: a first stop signal ends Tune's loop gracefully (SIGUSR1)."""
    if not (_state.depth and _main_thread()):
        yield
        return
    old_env, old_usr1 = os.environ.get(_TUNE_ENV), signal.getsignal(signal.SIGUSR1)
    os.environ[_TUNE_ENV] = "1"
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # until Tune's loop installs its handler: raise, not ask
    _state.in_tune = True
    try:
        yield
    finally:
        _state.in_tune = False
        signal.signal(signal.SIGUSR1, old_usr1)
        if old_env is None:
            os.environ.pop(_TUNE_ENV, None)
        else:
            os.environ[_TUNE_ENV] = old_env


def phase(name: str, say: Callable[[str], None] | None = None) -> None:
    """The driver enters phase `name`: stop here if asked; pause here if SAMSNET_PAUSE_AT names it.

    Our handlers are put back first: a library of the phase before may have replaced them."""
    reinstall()
    check()
    if name not in {p.strip() for p in os.environ.get(PAUSE_ENV, "").split(",")}:
        return
    (say or print)(f"paused at {name} ({PAUSE_ENV})")
    deadline = time.monotonic() + PAUSE_MAX_S
    while time.monotonic() < deadline:
        time.sleep(0.05)  # a signal wakes the sleep; its handler raises here
        check()
