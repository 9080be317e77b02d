"""ComputeThread: one thread does the work, in order; streams hand items, errors and abandonment across."""

import threading
import time

import pytest

from webui.compute import SHORT_SPIN, ComputeThread, short_spin_environment


def test_calls_run_in_order_on_one_other_thread():
    compute = ComputeThread()
    idents = [compute.call(threading.get_ident) for _ in range(3)]
    assert len(set(idents)) == 1 and idents[0] != threading.get_ident()
    assert compute.call(lambda a, *, b: a + b, 2, b=3) == 5
    # A call made from the compute thread runs at once instead of waiting for itself (which would hang).
    nested = []
    caller = threading.Thread(target=lambda: nested.append(compute.call(compute.call, threading.get_ident)))
    caller.start()
    caller.join(10)
    assert nested == [idents[0]]


def test_errors_reach_the_caller():
    compute = ComputeThread()
    with pytest.raises(KeyError, match="missing"):
        compute.call(lambda: {}["missing"])
    assert compute.call(lambda: "still working") == "still working"


def test_stream_yields_the_producers_items_from_the_compute_thread():
    compute = ComputeThread()
    produced_on = []

    def produce(abandoned):
        for i in range(5):
            produced_on.append(threading.get_ident())
            yield i

    assert list(compute.stream(produce)) == [0, 1, 2, 3, 4]
    assert set(produced_on) == {compute.call(threading.get_ident)}


def test_stream_starts_after_the_work_queued_before_it():
    compute = ComputeThread()
    order, items = [], []
    started, release = threading.Event(), threading.Event()

    def blocking():
        started.set()
        release.wait(10)
        order.append("queued first")

    def produce(abandoned):
        order.append("stream")
        yield 1

    blocker = threading.Thread(target=compute.call, args=(blocking,))
    blocker.start()
    assert started.wait(10)
    consumer = threading.Thread(target=lambda: items.extend(compute.stream(produce)))
    consumer.start()
    time.sleep(0.2)  # the consumer has asked for its first item: the producer would run now if it did not wait
    release.set()
    consumer.join(10)
    blocker.join(10)
    assert order == ["queued first", "stream"] and items == [1]


def test_a_producers_error_is_raised_in_the_consumer_after_its_items():
    compute = ComputeThread()

    def produce(abandoned):
        yield "first"
        raise RuntimeError("decoding failed")

    stream = compute.stream(produce)
    assert next(stream) == "first"
    with pytest.raises(RuntimeError, match="decoding failed"):
        next(stream)


def test_closing_the_stream_tells_the_producer_to_stop():
    compute = ComputeThread()
    steps = []
    closed = threading.Event()

    def produce(abandoned):
        try:
            while not abandoned():
                steps.append(len(steps))
                yield steps[-1]
        finally:
            closed.set()

    stream = compute.stream(produce)
    assert next(stream) == 0
    stream.close()
    assert closed.wait(10)
    at_close = len(steps)
    assert compute.call(len, steps) == at_close  # no step after the producer saw it was abandoned


def test_a_stream_consumed_on_the_compute_thread_runs_inline():
    compute = ComputeThread()

    def produce(abandoned):
        yield threading.get_ident()

    inner = []
    caller = threading.Thread(target=lambda: inner.extend(compute.call(lambda: list(compute.stream(produce)))))
    caller.start()
    caller.join(10)  # waiting for itself would hang
    assert inner == [compute.call(threading.get_ident)]


def test_a_producer_that_ignores_abandonment_still_ends_once_the_stream_is_closed():
    compute = ComputeThread()
    produced = []

    def produce(abandoned):
        for i in range(10**7):
            produced.append(i)
            yield i

    stream = compute.stream(produce)
    next(stream)
    stream.close()
    at_close = len(produced)
    compute.call(lambda: None)  # queued behind the producer: returns once it has ended
    assert len(produced) <= at_close + 1


def test_openmp_starts_with_a_short_spin_unless_the_user_chose():
    assert short_spin_environment({"PATH": "/bin"}) == {"GOMP_SPINCOUNT": str(SHORT_SPIN)}
    assert short_spin_environment({"GOMP_SPINCOUNT": "300000"}) == {}
    assert short_spin_environment({"OMP_WAIT_POLICY": "active"}) == {}
