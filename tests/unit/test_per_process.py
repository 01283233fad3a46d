"""A background thread per process: started once in each, again in a forked child."""
import os

from tasks.per_process import OncePerProcess


def test_it_starts_once_in_a_process_and_again_in_a_forked_child():
    started = []
    start = OncePerProcess(lambda: started.append(os.getpid()))
    start()
    start()
    assert started == [os.getpid()] and start.started_here()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child inherits `started` as it was, and must start its own
        start()
        start()
        os.write(write, str(len(started)).encode())
        os._exit(0)
    os.waitpid(child, 0)
    assert os.read(read, 10) == b"2"  # the parent's start, and its own once
    assert started == [os.getpid()]


def test_a_thread_arriving_while_another_starts_finds_the_start_done():
    import threading
    import time

    done = threading.Event()

    def start():
        time.sleep(0.2)
        done.set()

    once = OncePerProcess(start)
    first = threading.Thread(target=once)
    first.start()
    time.sleep(0.05)  # the first thread is inside `start`
    once()
    assert done.is_set(), "returned before the start it skipped had finished"
    first.join()
