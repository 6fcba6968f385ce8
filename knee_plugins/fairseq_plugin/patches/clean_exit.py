"""Patch ``clean_exit``: ``fairseq-train`` exits with status 0 instead of aborting in its prefetch thread.

fairseq prefetches batches in a daemon ``BackgroundConsumer`` thread (``--data-buffer-size``,
default 10). When training stops before an epoch's last batch (``--max-update``), that thread is
still collating the next batches while the interpreter shuts down. On Python 3.11 with recent
torch, a daemon thread that is inside a torch operator when it tries to take the GIL during
finalisation is torn down with a forced unwind through C++ frames, and the process dies with
``terminate called without an active exception`` (SIGABRT, exit status 134 / -6) *after* "done
training" — breaking ``fairseq-train ... && fairseq-generate ...`` pipelines and job schedulers
that look at the exit status.

At exit (after the main thread has finished, before finalisation) each live consumer is handed a
queue that refuses new items and its pending buffer is drained, so it stops at its next ``put``
(within one batch) and is joined. ``--data-buffer-size 0`` avoids the thread altogether.
"""

from __future__ import annotations

import atexit
import queue
import threading

from ._shape import code_names, require, require_names

NAME = "clean_exit"
_JOIN_TIMEOUT_S = 30.0


class _RefusingQueue:
    """Stands in for a consumer's queue at exit: every ``put`` ends the consumer thread.

    ``SystemExit`` passes fairseq's ``except Exception`` and is the one exception that
    ``threading.excepthook`` ignores without printing a traceback (exactly that class, not a subclass).
    """

    def put(self, item, block=True, timeout=None):
        raise SystemExit()


def stop_background_consumers(timeout: float = _JOIN_TIMEOUT_S) -> list[threading.Thread]:
    """Stop and join every live fairseq ``BackgroundConsumer``; return those still alive."""
    from fairseq.data import iterators

    consumers = [
        thread
        for thread in threading.enumerate()
        if isinstance(thread, iterators.BackgroundConsumer) and thread.is_alive()
    ]
    for consumer in consumers:
        buffer = consumer._queue
        consumer._queue = _RefusingQueue()
        while True:  # a put blocked on a full buffer returns once there is room
            try:
                buffer.get_nowait()
            except queue.Empty:
                break
    for consumer in consumers:
        consumer.join(timeout)
    return [consumer for consumer in consumers if consumer.is_alive()]


def check() -> None:
    from fairseq.data import iterators

    consumer = iterators.BackgroundConsumer
    require(
        isinstance(consumer, type) and issubclass(consumer, threading.Thread),
        "BackgroundConsumer is not a threading.Thread",
    )
    require_names(consumer.__init__, ["_queue"])
    require_names(consumer.run, ["_queue", "put", "Exception"])
    require("BaseException" not in code_names(consumer.run), "BackgroundConsumer.run catches BaseException")


def apply() -> None:
    """Register :func:`stop_background_consumers` to run at interpreter exit (idempotent)."""
    atexit.unregister(stop_background_consumers)
    atexit.register(stop_background_consumers)
