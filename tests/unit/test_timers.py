"""The sweep of cancelled entries off the worker's event-loop timer, on kombu's real timer."""

from celery import Celery
from kombu.asynchronous.timer import Timer

from celery_events import EventBus
from celery_events._timers import CancelledTimerSweep, drop_cancelled
from celery_events._worker import _on_worker_init


def due_now(timer: Timer) -> list[object]:
    """Run the timer as the event loop does and return what it called, in order."""
    called: list[object] = []
    for _wait, entry in timer:
        if entry is None:
            return called
        called.append(entry())
    return called


def test_cancelled_time_limits_leave_the_heap_and_what_is_due_still_runs_in_order() -> None:
    # Given the timer of a worker that ran 10,000 tasks with a 300 s limit (each one's entry
    # cancelled when it ended) and has three entries still to run
    timer = Timer()
    for n in range(10_000):
        timer.call_after(300 + n / 1000, lambda: "limit").cancel()
    for name, delay in (("second", -1.0), ("first", -2.0), ("later", 60.0)):
        timer.call_after(delay, lambda name=name: name)

    # When the sweep runs
    dropped = drop_cancelled(timer)

    # Then only the three remain, and the two that are due run in their order
    assert dropped == 10_000
    assert len(timer) == 3
    assert due_now(timer) == ["first", "second"]
    assert [event.entry() for event in timer.queue] == ["later"]


def test_the_sweep_changes_the_heap_the_running_loop_iterates() -> None:
    # Given an event loop already iterating the timer (kombu's iterator holds the heap list)
    timer = Timer()
    loop = iter(timer)
    timer.call_after(300, lambda: "limit").cancel()
    timer.call_after(-1, lambda: "due")

    # When the sweep runs between two turns of the loop
    assert drop_cancelled(timer) == 1

    # Then the loop sees the swept heap
    _wait, entry = next(loop)
    assert entry is not None and entry() == "due"
    assert next(loop) == (None, None)
    assert len(timer) == 0


def test_a_sweep_with_nothing_cancelled_keeps_the_heap() -> None:
    timer = Timer()
    timer.call_after(10, lambda: "later")
    heap = timer._queue
    assert drop_cancelled(timer) == 0
    assert timer._queue is heap and len(timer) == 1


def test_a_bus_worker_gets_the_sweep_as_a_consumer_step() -> None:
    app = Celery("orders", broker="redis://127.0.0.1:1/0")
    EventBus(app, service="orders")

    class Worker:  # what celeryd_init hands over: the worker being built
        pass

    worker = Worker()
    worker.app = app  # type: ignore[attr-defined]
    _on_worker_init(instance=worker)
    assert CancelledTimerSweep in app.steps["consumer"]
