"""One long-lived thread for all of a served model's tensor work.

torch's CPU kernels run in parallel with OpenMP, and every thread that starts
parallel work gets its own team of helper threads, kept for the thread's
life. Once the teams together hold more threads than there are cores, GNU
OpenMP stops letting idle helpers spin, so each parallel op waits for its
helpers to be woken: a small model's decode step, hundreds of short ops,
runs at half speed or less. Gradio calls a streaming handler's steps on
whichever of its worker threads is free, while the model was loaded in the
main thread, so decoding there ran in exactly that state. A backend that
loads, preprocesses and decodes on one :class:`ComputeThread` keeps a single
team, as a plain script has.

That team's idle helpers then spin for a long while (GNU OpenMP's default
is 300,000 spins) waiting for the next op: fastest on an idle machine, but
on one shared with other busy programs the kernel takes the core from a
spinning helper, and every parallel op waits a time slice for it. The web
UI therefore starts OpenMP with a short spin (:func:`short_spin_environment`):
helpers that wait longer than that sleep, and are woken when work comes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import closing
from queue import SimpleQueue
from typing import TypeVar

T = TypeVar("T")

_ITEM, _END, _ERROR = "item", "end", "error"

# Spins before an idle GNU OpenMP helper sleeps (one spin is a load and a `pause`: ~27 ns on an AMD EPYC, so ~30 µs
# against the default's ~8 ms). Chosen by a sweep as served
# (benchmarks/README.md, "As served"): a little slower than the default on an idle machine, far faster on a busy one.
SHORT_SPIN = 1000
# The variables by which a user chooses how GNU OpenMP's idle helpers wait; either one set leaves the choice to them.
OPENMP_WAIT_VARIABLES = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")


def short_spin_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables to add to ``environ`` so that GNU OpenMP's idle helpers spin briefly, then sleep.

    Empty when the user has chosen already (``GOMP_SPINCOUNT`` or
    ``OMP_WAIT_POLICY`` set). OpenMP reads them once, when torch loads it:
    apply them before torch is imported, or to a new process's environment.
    """
    if any(name in environ for name in OPENMP_WAIT_VARIABLES):
        return {}
    return {"GOMP_SPINCOUNT": str(SHORT_SPIN)}


class ComputeThread:
    """Run functions and streams on one dedicated thread, one at a time, in the order they were asked for.

    The thread is a daemon: leaving the program does not wait for an answer
    being decoded.
    """

    def __init__(self, name: str = "yuren-compute"):
        self._jobs: SimpleQueue[Callable[[], None]] = SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            self._jobs.get()()

    def on_thread(self) -> bool:
        """Whether the caller is running on this compute thread."""
        return threading.current_thread() is self._thread

    def call(self, fn: Callable[..., T], /, *args, **kwargs) -> T:
        """``fn(*args, **kwargs)`` run on the compute thread (directly when already on it); its result or error."""
        if self.on_thread():
            return fn(*args, **kwargs)
        future: Future[T] = Future()

        def job() -> None:
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as error:  # handed to the caller, which raises it
                future.set_exception(error)

        self._jobs.put(job)
        return future.result()

    def stream(self, produce: Callable[[Callable[[], bool]], Iterator[T]]) -> Iterator[T]:
        """Iterate ``produce(abandoned)`` on the compute thread, yielding its items here as they come.

        The producer runs ahead of the consumer (each item is handed over
        through a queue, never waiting for the consumer to take it) and
        starts when the first item is asked for, after the work already
        queued. ``abandoned()`` turns true once this iterator is closed (the
        consumer left): the producer should check it before each costly step;
        its items are dropped from then on. The producer's error is raised
        here, in the consumer. Consumed on the compute thread itself, the
        producer simply runs inline.
        """
        abandoned = threading.Event()
        if self.on_thread():
            with closing(produce(abandoned.is_set)) as produced:
                yield from produced
            return
        items: SimpleQueue = SimpleQueue()

        def run() -> None:
            try:
                with closing(produce(abandoned.is_set)) as produced:
                    for item in produced:
                        if abandoned.is_set():
                            break
                        items.put((_ITEM, item))
                items.put((_END, None))
            except BaseException as error:  # handed to the consumer, which raises it
                items.put((_ERROR, error))

        self._jobs.put(run)
        try:
            while True:
                kind, value = items.get()
                if kind == _END:
                    return
                if kind == _ERROR:
                    raise value
                yield value
        finally:
            abandoned.set()
