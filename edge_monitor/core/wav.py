"""The one audio file loader of the project: a small RIFF/WAVE reader and writer.

:class:`WavFile` walks the RIFF chunk headers itself (no ``wave``, no scipy), decodes 8-bit
unsigned, 16/24/32-bit signed PCM and 32/64-bit float (plain or WAVE_FORMAT_EXTENSIBLE) with
vectorised numpy and returns float32 samples in [-1, 1], for any range of frames: replay streams a
file block by block; ``read_wav`` / ``load_audio`` read whole clips. Every problem a user can cause raises
:class:`~edge_monitor.core.errors.AudioError` with one line: the file, what is wrong, what to do.
"""

from __future__ import annotations

import os
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np

from edge_monitor.core.errors import AudioError, UserError
from edge_monitor.core.resample import StreamResampler

PathLike = Union[str, "os.PathLike[str]"]

_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE
# KSDATAFORMAT_SUBTYPE_* GUIDs are the format tag (2 bytes LE) followed by this fixed tail.
_GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"

# encoding -> (format tag, bits per sample, numpy dtype of one decoded sample, zero offset)
_CODECS: dict[str, tuple[int, int, str, int]] = {
    "pcm_u8": (_PCM, 8, "u1", 128),
    "pcm16": (_PCM, 16, "<i2", 0),
    "pcm24": (_PCM, 24, "<i4", 0),  # stored in 3 bytes, widened to int32 on read
    "pcm32": (_PCM, 32, "<i4", 0),
    "float32": (_FLOAT, 32, "<f4", 0),
    "float64": (_FLOAT, 64, "<f8", 0),
}
_ENCODING_OF = {(tag, bits): name for name, (tag, bits, _, _) in _CODECS.items()}

_TAG_NAMES = {
    2: "Microsoft ADPCM", 6: "A-law", 7: "mu-law", 0x11: "IMA ADPCM", 0x31: "GSM 6.10",
    0x50: "MPEG audio", 0x55: "MP3", 0x160: "WMA", 0x161: "WMA", 0x2000: "AC-3", 0xF1AC: "FLAC",
}
_CONVERT = "convert it to PCM, e.g. `ffmpeg -i in.wav -c:a pcm_s16le out.wav`"
_RECOPY = "re-copy or re-export the file"
MIN_RATE, MAX_RATE = 1_000, 768_000  # a header outside this is damaged (it would ask for absurd allocations)
MAX_FMT_BYTES = 1024


@dataclass(frozen=True)
class WavInfo:
    """What the ``fmt `` and ``data`` chunks say about a WAV file."""

    sample_rate: int
    channels: int
    frames: int
    encoding: str  # one of "pcm_u8", "pcm16", "pcm24", "pcm32", "float32", "float64"


def _fail(path: PathLike, what: str, todo: str) -> AudioError:
    """Build the one-line error ``<file>: <what is wrong>; <what to do>``."""
    msg = f"{os.fspath(path)}: {what}; {todo}"
    return AudioError(" ".join(msg.splitlines()))


def _fmt_name(tag: int) -> str:
    return f"{_TAG_NAMES[tag]} (format tag {tag})" if tag in _TAG_NAMES else f"format tag 0x{tag:04X}"


def _parse_fmt(path: PathLike, body: bytes) -> tuple[int, int, int, str]:
    """Return (channels, sample_rate, block_align, encoding) from a ``fmt `` chunk body."""
    if len(body) < 16:
        raise _fail(path, f"fmt chunk is {len(body)} bytes, expected at least 16", _RECOPY)
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", body)
    kind = "PCM"
    if tag == _EXTENSIBLE:
        if len(body) < 40:
            raise _fail(path, f"WAVE_FORMAT_EXTENSIBLE fmt chunk is {len(body)} bytes, expected 40", _RECOPY)
        guid = body[24:40]
        if guid[2:] != _GUID_TAIL:
            raise _fail(path, f"unsupported WAVE_FORMAT_EXTENSIBLE sub-format {guid.hex()}", _CONVERT)
        tag = int.from_bytes(guid[:2], "little")  # container bits decide the layout; valid bits are MSB-aligned
    if tag == _FLOAT:
        kind = "float"
    elif tag != _PCM:
        raise _fail(path, f"unsupported encoding {_fmt_name(tag)}", _CONVERT)
    encoding = _ENCODING_OF.get((tag, bits))
    if encoding is None:
        raise _fail(path, f"unsupported bit depth: {bits}-bit {kind} (supported: 8/16/24/32-bit PCM, "
                          "32/64-bit float)", _CONVERT)
    if channels == 0:
        raise _fail(path, "fmt chunk declares 0 channels", _RECOPY)
    if rate == 0:
        raise _fail(path, "fmt chunk declares a sample rate of 0 Hz", _RECOPY)
    if block_align != channels * bits // 8:
        raise _fail(path, f"block-align mismatch: fmt declares {block_align} bytes per frame but "
                          f"{channels} channel(s) x {bits} bits need {channels * bits // 8}", _RECOPY)
    return channels, rate, block_align, encoding


def _find_chunks(path: PathLike, handle: BinaryIO, file_size: int) -> tuple[bytes, int, int]:
    """Walk the RIFF chunks by their headers (seeking past bodies); return (fmt body, data offset, data size)."""
    fmt: bytes | None = None
    data: tuple[int, int] | None = None
    pos = 12
    while pos + 8 <= file_size and (fmt is None or data is None):
        handle.seek(pos)
        cid, size = struct.unpack("<4sI", handle.read(8))
        pos += 8
        have = file_size - pos
        if cid == b"data" and data is None:
            if size > have:
                raise _fail(path, f"truncated: header declares {size} bytes of audio "
                                  f"but the file holds {have}", _RECOPY)
            data = (pos, size)
        elif size > have:
            raise _fail(path, f"truncated: {cid.decode('latin-1')!r} chunk declares {size} bytes "
                              f"but the file holds {have}", _RECOPY)
        elif cid == b"fmt " and fmt is None:
            if size > MAX_FMT_BYTES:
                raise _fail(path, f"fmt chunk declares {size} bytes (a fmt chunk is 16-40)", _RECOPY)
            fmt = handle.read(size)
        pos += size + (size & 1)  # odd-sized chunks are followed by a pad byte
    if fmt is None:
        raise _fail(path, "no 'fmt ' chunk (the WAV header is missing or damaged)", _RECOPY)
    if data is None:
        raise _fail(path, "no 'data' chunk (the file holds no audio)", _RECOPY)
    return fmt, *data


def _decode(raw: bytes, offset: int, count: int, encoding: str) -> np.ndarray:
    """Vectorised decode of ``count`` interleaved samples to float32 in [-1, 1]."""
    tag, bits, dtype, zero = _CODECS[encoding]
    if encoding == "pcm24":  # put 3 LE bytes in the top of an int32, arithmetic shift restores the sign
        wide = np.zeros((count, 4), np.uint8)
        wide[:, 1:] = np.frombuffer(raw, np.uint8, count * 3, offset).reshape(count, 3)
        x = wide.view("<i4").ravel() >> 8
    else:
        x = np.frombuffer(raw, dtype, count, offset)
    out = x.astype(np.float32)
    if tag == _PCM:
        if zero:
            out -= zero
        out *= 1.0 / 2 ** (bits - 1)
    return out


class WavFile:
    """An open WAV file: the header parsed and checked, samples read by frame range.

    Replay streams a file through it block by block, so a day-long recording replays in flat memory;
    ``read_wav`` and ``load_audio`` read whole clips through it. Use as a context manager or ``close()``.
    Raises AudioError (one line naming the file) for anything unreadable or unsupported.
    """

    def __init__(self, path: PathLike):
        self.path = path
        try:
            self._handle: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed by close()
        except FileNotFoundError:
            raise _fail(path, "file not found", "check the path") from None
        except IsADirectoryError:
            raise _fail(path, "is a folder, not a WAV file", "pass a .wav file") from None
        except OSError as exc:
            raise _fail(path, f"cannot read file ({exc.strerror or exc})", "check permissions and the disk") from None
        try:
            self.info, self._offset, self._block_align = self._parse()
        except BaseException:
            self._handle.close()
            raise

    def _parse(self) -> tuple[WavInfo, int, int]:
        path, handle = self.path, self._handle
        try:
            file_size = os.fstat(handle.fileno()).st_size
            head = handle.read(12)
        except OSError as exc:
            raise _fail(path, f"cannot read file ({exc.strerror or exc})", "check permissions and the disk") from None
        if not head:
            raise _fail(path, "empty file (0 bytes)", _RECOPY)
        magic = head[:4]
        if magic == b"RIFX":
            raise _fail(path, "big-endian RIFX WAV is not supported", _CONVERT)
        if magic in (b"RF64", b"BW64"):
            raise _fail(path, f"{magic.decode()} WAV (> 4 GB format) is not supported", "split it or " + _CONVERT)
        if magic != b"RIFF":
            raise _fail(path, "not a WAV file (no RIFF header)", "pass a RIFF/WAVE .wav file")
        if len(head) < 12:
            raise _fail(path, f"truncated: the file holds only {len(head)} bytes of header", _RECOPY)
        if head[8:12] != b"WAVE":
            form = head[8:12].decode("latin-1")
            raise _fail(path, f"not a WAV file (RIFF form type {form!r}, expected 'WAVE')", "pass a .wav file")
        try:
            fmt, offset, size = _find_chunks(path, handle, file_size)
        except OSError as exc:
            raise _fail(path, f"cannot read file ({exc.strerror or exc})", "check permissions and the disk") from None
        channels, rate, block_align, encoding = _parse_fmt(path, fmt)
        if not MIN_RATE <= rate <= MAX_RATE:
            raise _fail(path, f"sample rate {rate} Hz is outside {MIN_RATE}-{MAX_RATE} Hz (the header is damaged "
                              "or the file is not audio)", _RECOPY)
        if size % block_align:
            raise _fail(path, f"truncated: data chunk holds {size} bytes, not a whole number of "
                              f"{block_align}-byte frames", _RECOPY)
        frames = size // block_align
        if frames == 0:
            raise _fail(path, "no audio samples (the data chunk is empty)", "record or export a file with audio")
        return WavInfo(rate, channels, frames, encoding), offset, block_align

    def read(self, start: int = 0, count: int | None = None) -> np.ndarray:
        """Frames ``start`` .. ``start + count`` (clipped to the file) as float32 of shape (frames, channels)."""
        info = self.info
        start = max(0, min(int(start), info.frames))
        count = info.frames - start if count is None else max(0, min(int(count), info.frames - start))
        try:
            self._handle.seek(self._offset + start * self._block_align)
            raw = self._handle.read(count * self._block_align)
        except OSError as exc:
            raise _fail(self.path, f"cannot read file ({exc.strerror or exc})", "check permissions and the disk") from None
        if len(raw) < count * self._block_align:  # the file shrank while we read it
            raise _fail(self.path, f"truncated while reading at frame {start + len(raw) // self._block_align}", _RECOPY)
        samples = _decode(raw, 0, count * info.channels, info.encoding)
        if _CODECS[info.encoding][0] != _PCM:  # only float files can hold NaN or inf
            bad = np.flatnonzero(~np.isfinite(samples))
            if bad.size:
                frame, ch = divmod(int(bad[0]), info.channels)
                frame += start
                kind = "NaN" if np.isnan(samples[bad[0]]) else "inf"
                raise _fail(self.path, f"{kind} sample at {frame / info.sample_rate:.3f} s (frame {frame}, channel "
                                       f"{ch}, {bad.size} non-finite in this stretch)",
                            "the file is corrupt: re-record or re-export it")
        return samples.reshape(count, info.channels)

    def channel(self, samples: np.ndarray, channel: int | str) -> np.ndarray:
        """One channel (index, or "mix" = mean of all channels) of ``read``'s frames, 1-D float32."""
        if channel == "mix":
            return samples.mean(axis=1, dtype=np.float32)
        if isinstance(channel, (int, np.integer)) and not isinstance(channel, bool):
            if not 0 <= channel < self.info.channels:
                raise _fail(self.path, f"channel {channel} does not exist: the file has {self.info.channels} "
                                       "channel(s)", f"use a channel from 0 to {self.info.channels - 1} or 'mix'")
            return np.ascontiguousarray(samples[:, channel])
        raise _fail(self.path, f"invalid channel {channel!r}", "use a channel index (0, 1, ...) or 'mix'")

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> WavFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_wav(path: PathLike) -> tuple[np.ndarray, WavInfo]:
    """Decode a whole RIFF/WAVE file to float32 samples of shape (frames, channels) in [-1, 1]."""
    with WavFile(path) as wav:
        return wav.read(), wav.info


def resample(x: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample a whole signal (along axis 0) with the project's one resampler; float32 out.

    The same samples as streaming the signal through :class:`~edge_monitor.core.resample.StreamResampler`
    block by block and flushing it (which is what replay and the daemon do), and equal to
    ``scipy.signal.resample_poly`` to float32 rounding.
    """
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    x = np.asarray(x, dtype=np.float32)
    if from_rate == to_rate:
        return x
    if x.ndim == 2:
        return np.stack([resample(x[:, c], from_rate, to_rate) for c in range(x.shape[1])], axis=1)
    resampler = StreamResampler(from_rate, to_rate)
    return np.concatenate((resampler.process(x), resampler.flush())).astype(np.float32, copy=False)


def parse_channel(text: str | int) -> int | str:
    """A channel choice from the command line or config: an index (``0``, ``1``, …) or ``mix``."""
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text
    if str(text).strip().lower() == "mix":
        return "mix"
    try:
        value = int(str(text))
    except ValueError:
        value = -1
    if value < 0:
        raise UserError(f"channel: expected a channel index (0, 1, ...) or 'mix', got {text!r}")
    return value


def load_audio(path: PathLike, sample_rate: int, channel: int | str = 0) -> np.ndarray:
    """Read a WAV file, pick ``channel`` (index, or "mix" = mean of all channels) and resample
    to ``sample_rate``; return a 1-D contiguous float32 array."""
    with WavFile(path) as wav:
        mono = wav.channel(wav.read(), channel)
        rate = wav.info.sample_rate
    return np.ascontiguousarray(resample(mono, rate, sample_rate), dtype=np.float32)


def _encode(x: np.ndarray, encoding: str) -> bytes:
    """Interleave and encode float samples (frames, channels) to the bytes of a data chunk."""
    tag, bits, dtype, zero = _CODECS[encoding]
    if tag == _FLOAT:
        return x.astype(dtype).tobytes()
    full = 2.0 ** (bits - 1)
    q = (np.clip(np.rint(x.astype(np.float64) * full), -full, full - 1) + zero).astype(dtype)
    if encoding == "pcm24":
        return q.reshape(-1, 1).view(np.uint8)[:, :3].tobytes()
    return q.tobytes()


def wav_bytes(samples: np.ndarray, sample_rate: int, encoding: str = "pcm16") -> bytes:
    """A whole plain RIFF/WAVE file as bytes: float samples in [-1, 1], 1-D (mono) or (frames, channels).

    ``encoding`` is one of "pcm_u8", "pcm16", "pcm24", "pcm32" (rounded, clipped to range),
    "float32" or "float64". int16 samples with "pcm16" are taken as they are (the node's evidence clips).
    """
    if encoding not in _CODECS:
        raise ValueError(f"unknown encoding {encoding!r}; use one of {', '.join(_CODECS)}")
    x = np.asarray(samples)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"samples must be 1-D or (frames, channels), got shape {np.shape(samples)}")
    raw_pcm16 = x.dtype == np.int16 and encoding == "pcm16"
    if not raw_pcm16 and not np.all(np.isfinite(x)):
        raise ValueError("samples contain NaN or inf")
    if not 0 < sample_rate < 2**32:
        raise ValueError(f"invalid sample rate {sample_rate}")
    tag, bits, _, _ = _CODECS[encoding]
    channels = x.shape[1]
    block_align = channels * bits // 8
    data = np.ascontiguousarray(x).astype("<i2", copy=False).tobytes() if raw_pcm16 \
        else _encode(np.ascontiguousarray(x), encoding)
    pad = b"\x00" * (len(data) & 1)
    if 36 + len(data) + len(pad) >= 2**32:
        raise ValueError("audio too long for a RIFF WAV file (4 GB limit)")
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(data) + len(pad), b"WAVE", b"fmt ", 16,
                         tag, channels, int(sample_rate), int(sample_rate) * block_align, block_align, bits,
                         b"data", len(data))
    return header + data + pad


def write_wav(path: PathLike, samples: np.ndarray, sample_rate: int, encoding: str = "pcm16") -> None:
    """Write ``wav_bytes(samples, sample_rate, encoding)`` to ``path``.

    The file is written to a temp file in the same folder and moved into place with ``os.replace``, so a
    crash never leaves a half-written file.
    """
    data = wav_bytes(samples, sample_rate, encoding)
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode honours the umask, unlike mkstemp
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
