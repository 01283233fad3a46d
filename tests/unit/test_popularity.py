"""The API's popularity count: gathered in the process, written to Redis in batches."""
from batch_jobs.sources import PopularityCounter


def test_counts_wait_in_the_process_until_flushed(fake_redis):
    counter = PopularityCounter("ferry:", max_entries=100, max_input_bytes=50, flush_every_s=3600)
    for value in [1, 1, 1, 2, 2, 3]:
        counter.add(fake_redis, "m", "1", {"x": value}, f"id{value}")
    assert not fake_redis.exists("ferry:popular:m:1")  # a cache hit writes nothing
    counter.flush()
    assert fake_redis.zrevrange("ferry:popular:m:1", 0, -1, withscores=True) == [
        ('{"x":1}', 3.0), ('{"x":2}', 2.0), ('{"x":3}', 1.0)]
    counter.add(fake_redis, "m", "1", {"x": 3}, "id3")
    counter.flush()
    assert fake_redis.zscore("ferry:popular:m:1", '{"x":3}') == 2.0


def test_memory_is_bounded_and_large_inputs_are_not_counted(fake_redis):
    counter = PopularityCounter("ferry:", max_entries=3, max_input_bytes=50, flush_every_s=3600, max_pending=4)
    counter.add(fake_redis, "m", "1", {"x": "y" * 100}, "big")
    for value in range(4):  # the fourth distinct input fills the buffer: written at once
        counter.add(fake_redis, "m", "1", {"x": value}, f"id{value}")
    assert counter._distinct == 0
    assert fake_redis.zcard("ferry:popular:m:1") == 3  # trimmed to max_entries
    assert fake_redis.zscore("ferry:popular:m:1", '{"x":"' + "y" * 100 + '"}') is None


def test_a_background_thread_flushes(fake_redis):
    import time

    counter = PopularityCounter("ferry:", max_entries=100, max_input_bytes=50, flush_every_s=0.05)
    counter.add(fake_redis, "m", "1", {"x": 1}, "id1")
    deadline = time.monotonic() + 10
    while not fake_redis.exists("ferry:popular:m:1") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake_redis.zscore("ferry:popular:m:1", '{"x":1}') == 1.0
