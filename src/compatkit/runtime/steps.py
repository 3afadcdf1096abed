"""Observers of training steps: how experiment tracking sees every training loop (a run's
tasks, its providers, ``compatkit train``) without each caller passing a callback down.

It lives at the bottom layer so that both the training loop (``protocol.trainer``) and the
trackers (``tracking``) can reach it without either importing the other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["observe_steps", "step_observers"]

_OBSERVERS: ContextVar[tuple[Callable[[dict], None], ...]] = ContextVar("observers", default=())


@contextmanager
def observe_steps(observer: Callable[[dict], None]) -> Iterator[None]:
    """Within the block, every training loop also calls ``observer`` after each step with the
    dictionary its ``on_step`` callback receives."""
    token = _OBSERVERS.set((*_OBSERVERS.get(), observer))
    try:
        yield
    finally:
        _OBSERVERS.reset(token)


def step_observers() -> tuple[Callable[[dict], None], ...]:
    """The observers registered in this context, outermost first."""
    return _OBSERVERS.get()
