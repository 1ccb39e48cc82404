"""Preallocated single-producer/single-consumer float32 ring buffer with overrun accounting.

Sits between the audio callback (producer: a PortAudio thread that must never block) and the
processing thread (consumer). No lock anywhere; correctness rests on three rules:

- Every sample has a stream position (0, 1, 2, …); position ``p`` lives in slot ``p % capacity``.
- The producer owns two monotonically increasing ints. ``_reserved`` is set to the end of the block
  BEFORE its samples are stored, ``_written`` AFTER they are all stored. So ``[0, _written)`` is
  published, and the slots of positions below ``_reserved - capacity`` may already hold newer data.
- The consumer owns its position (``read_total + dropped``). A read starts at
  ``max(position, written - capacity)`` (older samples were overwritten: counted as dropped), copies
  out, then re-reads ``_reserved``: if a write published *or still in progress* has overwritten the
  start of what was copied, that prefix is discarded and counted as dropped. Re-reading ``_written``
  alone would miss a write caught halfway, which is why there are two counters: a seqlock in miniature.

When the consumer falls behind, the OLDEST samples are dropped; nothing is ever reordered or
duplicated, a corrupt (half-overwritten) sample is never delivered, and every lost sample is counted:
at any time ``written == read_total + dropped + (samples not read yet)``.

Thread safety: exactly one producer thread calls ``write`` and exactly one consumer thread calls
``read`` (the two may be different threads, or the same one). ``written`` may be looked at from any
thread; ``available``, ``read_total``, ``dropped`` and ``position`` are the consumer's view (from
another thread they are a consistent-enough snapshot for reporting, never for control). The ordering
argument relies on the GIL (CPython's default build): Python attribute stores and loads are
sequentially consistent, and numpy's copies that release the GIL are fenced by its release/acquire.
"""

from __future__ import annotations

import numpy as np


class RingBuffer:
    """A lock-free SPSC ring of ``capacity`` float32 samples; the consumer learns of every overrun.

    ``write(block)`` never blocks and never allocates a new array (float32 input is copied straight
    into the preallocated buffer; a strided view such as ``indata[:, 2]`` is fine). Other float dtypes
    are converted during that copy. Integer input is refused (TypeError): PCM needs scaling to
    [-1, 1], and guessing the scale belongs to the audio source, not here.
    """

    def __init__(self, capacity: int):
        if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) or capacity <= 0:
            raise ValueError(f"RingBuffer: capacity must be a positive number of samples, got {capacity!r}")
        self._capacity = int(capacity)
        self._buf = np.zeros(self._capacity, dtype=np.float32)
        # producer side
        self._reserved = 0  # end of the block being (or last) stored; set before storing
        self._written = 0  # end of the last block fully stored; set after storing
        # consumer side
        self._read_total = 0
        self._dropped = 0
        self.laps = 0  # reads whose copy the producer overwrote while it was made (diagnostic)

    # -- producer -------------------------------------------------------------------------------

    def write(self, samples: np.ndarray) -> None:
        """Append a 1-D block of float samples; a block longer than the capacity keeps its last ``capacity``.

        Never blocks. When the consumer is behind, the oldest samples are overwritten; the consumer
        counts them as dropped on its next ``read``.
        """
        if not isinstance(samples, np.ndarray):
            samples = np.asarray(samples)
        if samples.ndim != 1:
            raise ValueError(f"RingBuffer.write: expected a 1-D block, got shape {samples.shape}; pick one channel")
        if samples.dtype.kind != "f":
            raise TypeError(f"RingBuffer.write: expected float samples in [-1, 1], got dtype {samples.dtype}")
        n = samples.shape[0]
        if n == 0:
            return
        cap = self._capacity
        end = self._written + n
        if n > cap:  # only the last `capacity` samples can be kept; the rest are dropped unseen
            samples = samples[n - cap :]
            n = cap
        self._reserved = end  # announce BEFORE touching the slots, so the consumer can detect the lap
        buf = self._buf
        i = (end - n) % cap
        first = cap - i
        if n <= first:
            buf[i : i + n] = samples
        else:  # wraps around the end of the buffer
            buf[i:] = samples[:first]
            buf[: n - first] = samples[first:]
        self._written = end  # publish only after every sample is stored

    @property
    def written(self) -> int:
        """Total samples ever written (including those later dropped)."""
        return self._written

    # -- consumer -------------------------------------------------------------------------------

    def read(self, out: np.ndarray) -> tuple[int, int]:
        """Copy up to ``len(out)`` of the oldest available samples into ``out[:n]``; returns ``(n, dropped)``.

        ``dropped`` counts the samples lost immediately before ``out[0]`` since the previous read (so
        a nonzero value means a gap: reset streaming state). ``n`` is 0 when nothing is available
        (then ``dropped`` may still be nonzero, if a block still being written lapped this read).
        ``out`` must be a writable 1-D float32 array. Allocates nothing in the steady state.
        """
        if not isinstance(out, np.ndarray) or out.ndim != 1 or out.dtype != np.float32:
            raise TypeError("RingBuffer.read: out must be a 1-D float32 numpy array")
        cap = self._capacity
        want = out.shape[0]
        pos = self._read_total + self._dropped
        dropped = 0
        while True:
            written = self._written
            if written - pos > cap:  # overwritten before we got to them
                dropped += written - cap - pos
                pos = written - cap
            n = min(want, written - pos)
            if n <= 0:
                n = 0
                break
            self._copy_out(pos, n, out)
            safe = self._reserved - cap  # positions below this may have been overwritten during the copy
            if safe <= pos:
                break
            self.laps += 1
            lost = safe - pos
            dropped += min(lost, n)
            pos += min(lost, n)
            if lost < n:  # keep the intact tail (a forward overlapping copy is safe for numpy)
                n -= lost
                out[:n] = out[lost : lost + n]
                break
            # the whole copy was overwritten: try again from the new oldest sample
        self._dropped += dropped
        self._read_total += n
        return n, dropped

    def _copy_out(self, pos: int, n: int, out: np.ndarray) -> None:
        """Copy stream positions ``[pos, pos + n)`` into ``out[:n]`` (may race with the producer)."""
        cap = self._capacity
        buf = self._buf
        i = pos % cap
        first = cap - i
        if n <= first:
            out[:n] = buf[i : i + n]
        else:
            out[:first] = buf[i:]
            out[first:n] = buf[: n - first]

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def available(self) -> int:
        """Samples a ``read`` could return now (a snapshot; the producer may take some back by lapping)."""
        return min(self._written - self._read_total - self._dropped, self._capacity)

    @property
    def read_total(self) -> int:
        """Samples delivered by ``read`` so far."""
        return self._read_total

    @property
    def dropped(self) -> int:
        """Samples lost so far, as reported by ``read`` (an overrun not yet read is counted by the next read)."""
        return self._dropped

    @property
    def position(self) -> int:
        """Stream position of the next sample ``read`` will consider: ``read_total + dropped``."""
        return self._read_total + self._dropped
