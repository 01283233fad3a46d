"""Deferred writes: one flush at a time, so a flush returns only once what came before is written."""
import threading

from tasks.flushing import PeriodicFlush


def test_a_flush_waits_for_the_one_in_flight():
    waiting, written = [], []
    first_taken, release = threading.Event(), threading.Event()

    def write():
        taken = list(waiting)
        waiting.clear()
        if not written:  # the first write is slow to reach Redis
            first_taken.set()
            release.wait(10)
        written.append(taken)

    flusher = PeriodicFlush(write, every_s=60, what="test entries")
    waiting.append("a")
    background = threading.Thread(target=flusher.flush)
    background.start()
    assert first_taken.wait(10)
    waiting.append("b")
    second = threading.Thread(target=flusher.flush)
    second.start()
    second.join(0.2)
    assert second.is_alive() and written == []  # it waits: "a", taken before it, is not written yet
    release.set()
    second.join(10)
    background.join(10)
    assert written == [["a"], ["b"]]


def test_a_failed_flush_is_logged_and_dropped(caplog):
    def write():
        raise ConnectionError("Redis is away")

    PeriodicFlush(write, every_s=60, what="test entries").quietly()
    assert "test entries dropped: Redis is away" in caplog.text
