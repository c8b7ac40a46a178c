"""Stop requests: SIGINT/SIGTERM become a flag the loop reads, and long grids or evaluations give way.

Why a flag and not an exception from the handler: a stop must leave a checkpoint, so the handler only
records the request and the loop finishes the step, saves and exits (within one step). Only a second
Ctrl-C raises at once (KeyboardInterrupt, turned into ``TrainingInterrupted`` by the trainer).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = ["StopRequest", "StopRequested", "interruptible", "unless_stopped"]


class StopRequested(Exception):
    """Raised inside a sample grid or an evaluation when a stop signal arrives (see :func:`interruptible`)."""


class StopRequest:
    """The run's stop flag: the name of the signal that asked to stop, or None."""

    def __init__(self, say: Callable[[str], None]):
        self.signal: str | None = None
        self._say = say

    def request(self, name: str) -> None:
        """What a stop signal does: record it (tests call this to simulate one)."""
        self.signal = name

    def _handler(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now, without a checkpoint
        self.request(name)
        with contextlib.suppress(Exception):
            self._say(
                f"{name} received: finishing this step, saving a checkpoint and exiting "
                "(Ctrl-C again to abort without saving)"
            )

    @contextlib.contextmanager
    def handlers(self, install: bool = True) -> Iterator[None]:
        """SIGINT and SIGTERM set this flag while inside (main thread only; restored on the way out)."""
        if not install or threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)


@contextlib.contextmanager
def interruptible(model: torch.nn.Module, stop: StopRequest) -> Iterator[None]:
    """Make ``model`` raise StopRequested at its next forward once a stop signal is in.

    Why: a grid or an evaluation runs hundreds of forwards (35 s and more), longer than a cluster's grace
    period after SIGTERM; a forward pre-hook checks the flag between them, which costs one attribute read
    per forward and needs no change to the samplers.
    """

    def check(_module, _args):
        if stop.signal is not None:
            raise StopRequested

    handle = model.register_forward_pre_hook(check)
    try:
        yield
    finally:
        handle.remove()


def unless_stopped(
    model: torch.nn.Module,
    stop: StopRequest,
    say: Callable[[str], None],
    what: str,
    fn: Callable[..., Any],
    *args,
) -> None:
    """Run a grid or an evaluation of ``model``, abandoning it (no output written) when a stop arrives."""
    try:
        with interruptible(model, stop):
            fn(*args)
    except StopRequested:
        say(f"{stop.signal}: {what} abandoned to stop quickly (no file written for it)")
