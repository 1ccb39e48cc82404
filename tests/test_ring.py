"""RingBuffer: exact contents and overrun accounting, one thread and two real threads, no allocation."""

from __future__ import annotations

import sys
import threading
import time
import tracemalloc

import numpy as np
import pytest

from edge_monitor.node.ring import RingBuffer

EXACT = 2**24  # float32 holds every integer below this exactly: sample value = stream index mod EXACT


def stream(start: int, stop: int) -> np.ndarray:
    """The test signal: the sample at stream index i is float32(i mod 2**24)."""
    return (np.arange(start, stop) % EXACT).astype(np.float32)


def read_all(rb: RingBuffer, size: int = 1 << 16) -> tuple[np.ndarray, int]:
    out = np.empty(size, dtype=np.float32)
    n, dropped = rb.read(out)
    return out[:n].copy(), dropped


# -- one thread ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "8", None])
def test_capacity_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="capacity"):
        RingBuffer(bad)


def test_capacity_accepts_numpy_int():
    assert RingBuffer(np.int64(8)).capacity == 8


def test_empty_buffer():
    rb = RingBuffer(8)
    out = np.full(4, -1.0, dtype=np.float32)
    assert rb.read(out) == (0, 0)
    assert (out == -1).all()  # nothing touched
    assert (rb.available, rb.written, rb.read_total, rb.dropped, rb.position) == (0, 0, 0, 0, 0)
    rb.write(np.empty(0, dtype=np.float32))
    assert rb.written == 0


def test_wrap_around_exact_contents_and_partial_reads():
    rb = RingBuffer(8)
    rb.write(stream(0, 5))
    out = np.empty(3, dtype=np.float32)
    assert rb.read(out) == (3, 0)
    np.testing.assert_array_equal(out, stream(0, 3))
    assert rb.available == 2
    rb.write(stream(5, 11))  # slots 5..7 then 0..2: wraps
    assert rb.available == 8 and rb.written == 11
    got = []
    for size in (1, 4, 2, 5):  # partial reads across the wrap point, the last one asks for more than there is
        out = np.empty(size, dtype=np.float32)
        n, dropped = rb.read(out)
        assert dropped == 0
        got.append(out[:n].copy())
    np.testing.assert_array_equal(np.concatenate(got), stream(3, 11))
    assert [len(g) for g in got] == [1, 4, 2, 1]
    assert rb.read(np.empty(4, dtype=np.float32)) == (0, 0)
    assert (rb.read_total, rb.dropped, rb.position, rb.available) == (11, 0, 11, 0)


def test_many_wraps_with_odd_sizes_match_the_stream():
    rb, rng = RingBuffer(13), np.random.default_rng(1)
    written = expected = 0
    out = np.empty(20, dtype=np.float32)
    for _ in range(2000):
        k = int(rng.integers(0, 13 - rb.available + 1))  # never overfill: no drops
        rb.write(stream(written, written + k))
        written += k
        n, dropped = rb.read(out[: int(rng.integers(0, 20))])
        assert dropped == 0
        np.testing.assert_array_equal(out[:n], stream(expected, expected + n))
        expected += n
    assert rb.position == rb.read_total == expected and rb.written == written


def test_block_larger_than_capacity_keeps_its_last_samples():
    rb = RingBuffer(8)
    rb.write(stream(0, 3))
    rb.write(stream(3, 23))  # 20 samples into 8 slots
    assert rb.written == 23 and rb.available == 8
    data, dropped = read_all(rb)
    np.testing.assert_array_equal(data, stream(15, 23))
    assert dropped == 15  # the 3 older ones and the first 12 of the big block
    assert (rb.read_total, rb.dropped, rb.position) == (8, 15, 23)


def test_overfilled_drops_the_oldest_and_counts_every_one():
    rb = RingBuffer(10)
    rb.write(stream(0, 4))
    out = np.empty(2, dtype=np.float32)
    assert rb.read(out) == (2, 0)  # 0, 1
    for start in range(4, 28, 6):  # 24 more samples: only the last 10 (18..27) survive
        rb.write(stream(start, start + 6))
    assert rb.written == 28 and rb.available == 10
    assert rb.dropped == 0  # an overrun is counted when the consumer reads past it
    n, dropped = rb.read(out)
    assert (n, dropped) == (2, 16)  # positions 2..17 lost, the read returns 18, 19
    np.testing.assert_array_equal(out, stream(18, 20))
    assert rb.position == 20 == rb.read_total + rb.dropped
    n, dropped = rb.read(out)
    assert (n, dropped) == (2, 0)  # contiguous again: a gap is reported once
    np.testing.assert_array_equal(out, stream(20, 22))
    data, dropped = read_all(rb)
    np.testing.assert_array_equal(data, stream(22, 28))
    assert dropped == 0
    assert rb.read_total + rb.dropped == rb.written == rb.position == 28
    assert (rb.read_total, rb.dropped) == (12, 16)


def test_read_into_empty_out_still_reports_the_gap_once():
    rb = RingBuffer(4)
    rb.write(stream(0, 10))
    assert rb.read(np.empty(0, dtype=np.float32)) == (0, 6)
    data, dropped = read_all(rb)
    np.testing.assert_array_equal(data, stream(6, 10))
    assert dropped == 0


def test_strided_column_of_a_multichannel_block():
    frames = (np.arange(12 * 3).reshape(12, 3)).astype(np.float32)  # (frames, channels), as sounddevice gives
    column = frames[:, 2]
    assert not column.flags.c_contiguous
    rb = RingBuffer(16)
    rb.write(column)
    rb.write(frames[::-1, 0])  # a negative stride is fine too
    data, _ = read_all(rb)
    np.testing.assert_array_equal(data[:4], frames[8:, 2])  # 24 written into 16: the first 8 dropped
    np.testing.assert_array_equal(data[4:], frames[::-1, 0])


def test_float64_is_converted_and_integers_are_refused():
    rb = RingBuffer(8)
    rb.write(np.array([0.1, -0.5], dtype=np.float64))
    rb.write([0.25])  # a list of floats becomes float64, then float32
    data, _ = read_all(rb)
    assert data.dtype == np.float32
    np.testing.assert_array_equal(data, np.array([0.1, -0.5, 0.25], dtype=np.float32))
    for bad in (np.array([1, 2], dtype=np.int16), np.array([1, 2], dtype=np.int32), [1, 2], np.array([True])):
        with pytest.raises(TypeError, match="float samples"):  # PCM must be scaled by the source, not guessed here
            rb.write(bad)
    with pytest.raises(ValueError, match="1-D"):
        rb.write(np.zeros((4, 2), dtype=np.float32))
    assert rb.written == 3  # refused writes change nothing


def test_read_needs_a_float32_vector():
    rb = RingBuffer(8)
    for bad in (np.empty(4, dtype=np.float64), np.empty((2, 2), dtype=np.float32), [0.0] * 4):
        with pytest.raises(TypeError, match="float32"):
            rb.read(bad)


# -- the producer overwrites what the consumer is copying (interleaving forced, one thread) ------


class InterruptedRing(RingBuffer):
    """Runs ``interrupt`` at the worst moment of a read: after the range is chosen, before it is copied.

    This is the real class with a real write squeezed into the race window, so the interleaving that
    two threads produce only now and then is tested deterministically.
    """

    interrupt = None

    def _copy_out(self, pos, n, out):
        if self.interrupt is not None:
            interrupt, self.interrupt = self.interrupt, None
            interrupt()
        super()._copy_out(pos, n, out)


def test_samples_overwritten_during_a_read_are_dropped_not_delivered():
    rb = InterruptedRing(8)
    rb.write(stream(0, 8))
    rb.interrupt = lambda: rb.write(stream(8, 11))  # overwrites positions 0..2 while the consumer copies 0..7
    data, dropped = read_all(rb)
    np.testing.assert_array_equal(data, stream(3, 8))  # 8, 9, 10 sat in slots 0..2: never delivered as 0, 1, 2
    assert dropped == 3 and rb.laps == 1
    data, dropped = read_all(rb)
    np.testing.assert_array_equal(data, stream(8, 11))
    assert dropped == 0
    assert rb.read_total + rb.dropped == rb.written == 11


def test_a_write_caught_halfway_is_detected_too():
    rb = InterruptedRing(8)
    rb.write(stream(0, 8))

    def half_written_block():  # what a producer preempted inside write() has done: announced, stored part
        rb._reserved = rb.written + 4
        rb._buf[:2] = -1.0

    rb.interrupt = half_written_block
    data, dropped = read_all(rb)
    np.testing.assert_array_equal(data, stream(4, 8))  # the 4 slots the pending block may touch are refused
    assert dropped == 4 and rb.written == 8


def test_a_copy_overwritten_entirely_is_retried_from_the_newest_data():
    rb = InterruptedRing(8)
    rb.write(stream(0, 8))
    rb.interrupt = lambda: rb.write(stream(8, 30))  # laps the whole buffer mid-read
    out = np.empty(4, dtype=np.float32)
    n, dropped = rb.read(out)
    assert (n, dropped) == (4, 22)
    np.testing.assert_array_equal(out, stream(22, 26))
    data, dropped = read_all(rb)
    np.testing.assert_array_equal(data, stream(26, 30))
    assert dropped == 0 and rb.read_total + rb.dropped == 30


# -- two real threads ---------------------------------------------------------------------------


def run_threads(*, capacity: int, total: int, max_block: int, max_read: int, lossless: bool, seed: int,
                consumer_naps: bool = False, force_overrun: bool = False, burst: int = 16) -> tuple[RingBuffer, int]:
    """Producer thread writes ``stream(0, total)`` in random blocks; this thread reads and checks every sample.

    ``lossless``: the producer waits for room (watching the consumer's position), so nothing may be
    dropped. Otherwise it never waits, except for short pauses between bursts, and the consumer
    sometimes naps. Returns the buffer and the number of reads that delivered samples.
    """
    rb = RingBuffer(capacity)
    source = stream(0, total)
    rng = np.random.default_rng(seed)
    blocks = rng.integers(1, max_block + 1, size=total)  # more than enough sizes
    stop = threading.Event()
    producer_done = threading.Event()
    failure = []

    def produce():
        try:
            pos, k = 0, 0
            while pos < total and not stop.is_set():
                size = min(int(blocks[k]), total - pos)
                k += 1
                if lossless:
                    while pos + size - rb.position > capacity and not stop.is_set():
                        time.sleep(0)  # position is read from the other thread: stale only ever on the safe side
                elif k % burst == 0:
                    time.sleep(0.0002)  # bursts, then a pause: the consumer gets turns at catching up
                block = source[pos : pos + size]
                if k % 3 == 0:  # every third block arrives as a strided column, like indata[:, ch]
                    pair = np.empty((size, 2), dtype=np.float32)
                    pair[:, 1] = block
                    block = pair[:, 1]
                rb.write(block)
                pos += size
        except Exception as exc:  # noqa: BLE001 - handed to the test thread, which fails on it
            failure.append(exc)
        finally:
            producer_done.set()

    out = np.empty(max_read, dtype=np.float32)
    sizes = rng.integers(1, max_read + 1, size=1 << 16)
    expected = delivered = reads = 0
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often: many more interleavings per second
    thread = threading.Thread(target=produce, name="ring-producer")
    thread.start()
    try:
        i = 0
        while True:
            finished = producer_done.is_set()  # read BEFORE the read: a read after it that finds nothing = drained
            size = int(sizes[i % len(sizes)])
            i += 1
            n, dropped = rb.read(out[:size])
            assert dropped >= 0 and 0 <= n <= size
            if n:
                first = int(out[0])
                assert first == (expected + dropped) % EXACT, (
                    f"read {i}: first sample is index {first}, expected {expected} + dropped {dropped}")
                if not np.array_equal(out[:n], source[expected + dropped : expected + dropped + n]):
                    bad = int(np.flatnonzero(out[:n] != source[expected + dropped : expected + dropped + n])[0])
                    pytest.fail(f"read {i}: sample {bad} is {out[bad]}, expected {expected + dropped + bad}")
                reads += 1
            expected += dropped + n
            delivered += n
            assert rb.position == expected and rb.read_total == delivered
            if n == 0:
                if finished:
                    break
                time.sleep(0)
            if force_overrun and rb.dropped == 0 and not finished:
                while rb.written - rb.position <= 2 * capacity and not producer_done.is_set():
                    time.sleep(0.0005)  # fall a whole buffer behind once: drops are certain
            elif consumer_naps and i % 64 == 0:
                time.sleep(0.001)
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(old_interval)
    assert not failure, failure
    assert rb.written == total == expected
    assert rb.read_total + rb.dropped == rb.written
    assert rb.read_total == delivered
    return rb, reads


def test_threads_lossless_when_the_consumer_keeps_up():
    rb, reads = run_threads(capacity=4096, total=2_000_000, max_block=1500, max_read=3000, lossless=True, seed=7)
    assert rb.dropped == 0 and rb.read_total == 2_000_000
    assert reads > 100  # the buffer wrapped many times with both threads running


def test_threads_with_overruns_drop_oldest_and_count_exactly():
    rb, reads = run_threads(capacity=4096, total=3_000_000, max_block=2500, max_read=6000, lossless=False, seed=11,
                            burst=2, consumer_naps=True, force_overrun=True)
    assert rb.dropped > 0
    assert rb.read_total > 100_000 and reads > 100


def test_threads_blocks_larger_than_a_tiny_buffer():
    rb, reads = run_threads(capacity=256, total=2_000_000, max_block=400, max_read=600, lossless=False, seed=5,
                            burst=4)
    assert rb.dropped > 0 and reads > 100


def test_threads_producer_laps_the_consumer_mid_copy():
    # large unpaced writes and large reads: numpy copies them without the GIL, so the producer
    # overwrites samples while the consumer copies them; every such read must discard them
    laps = 0
    for seed in range(20):
        rb, _ = run_threads(capacity=2048, total=1_000_000, max_block=3000, max_read=4000, lossless=False,
                            seed=seed, burst=16)
        laps += rb.laps
        if laps >= 10:
            break
    assert laps > 0, "no read was ever overwritten mid-copy: the race was not exercised"


# -- allocation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["contiguous", "strided column"])
def test_write_and_read_allocate_nothing(layout):
    rb = RingBuffer(5000)  # not a multiple of the block: writes wrap at varying offsets
    frames = np.random.default_rng(0).standard_normal((1024, 2)).astype(np.float32)
    block = np.ascontiguousarray(frames[:, 0]) if layout == "contiguous" else frames[:, 1]
    out = np.empty(700, dtype=np.float32)
    for _ in range(100):  # warm up any caches
        rb.write(block)
        rb.read(out)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(10_000):
            rb.write(block)
        after, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(10_000):
            rb.write(block)
            rb.read(out)
        _, read_peak = tracemalloc.get_traced_memory()
        # calibration: the same tracer sees a new 4 KiB array per write
        tracemalloc.reset_peak()
        for _ in range(10):
            rb.write(block.copy())
        _, copy_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # a few hundred bytes of transient view objects are fine; one 4 KiB array per call is not
    assert copy_peak - before >= 4096
    assert after - before < 1024
    assert write_peak - before < 2048
    assert read_peak - before < 2048
