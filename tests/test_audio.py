"""Tests for edge_monitor.core.wav: decoder cross-checked against scipy.io.wavfile, hand-packed files, bad inputs."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile

from edge_monitor.core.errors import AudioError, UserError
from edge_monitor.core.wav import WavInfo, load_audio, read_wav, resample, write_wav

RNG = np.random.default_rng(1234)
GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"

# encoding -> (format tag, bits, struct code or None for 24-bit, integer range or None for float)
SPECS = {
    "pcm_u8": (1, 8, "B", (0, 255)),
    "pcm16": (1, 16, "h", (-2**15, 2**15 - 1)),
    "pcm24": (1, 24, None, (-2**23, 2**23 - 1)),
    "pcm32": (1, 32, "i", (-2**31, 2**31 - 1)),
    "float32": (3, 32, "f", None),
    "float64": (3, 64, "d", None),
}


# ---------------------------------------------------------------- hand-made files (struct only)

def riff(*chunks: tuple[bytes, bytes], magic: bytes = b"RIFF", form: bytes = b"WAVE") -> bytes:
    """RIFF container of (id, body) chunks, with pad bytes after odd-sized bodies."""
    body = b"".join(struct.pack("<4sI", cid, len(b)) + b + b"\x00" * (len(b) & 1) for cid, b in chunks)
    return struct.pack("<4sI4s", magic, 4 + len(body), form) + body


def fmt(tag: int, channels: int, rate: int, bits: int, block_align: int | None = None,
        extensible: bool = False) -> tuple[bytes, bytes]:
    align = channels * bits // 8 if block_align is None else block_align
    head = (0xFFFE if extensible else tag, channels, rate, rate * align, align, bits)
    body = struct.pack("<HHIIHH", *head)
    if extensible:  # cbSize, valid bits, channel mask, sub-format GUID
        body += struct.pack("<HHI", 22, bits, (1 << channels) - 1) + struct.pack("<H", tag) + GUID_TAIL
    return b"fmt ", body


def pack(values: np.ndarray, encoding: str) -> bytes:
    """Interleaved samples packed with struct, independently of edge_monitor.core.wav."""
    code = SPECS[encoding][2]
    flat = values.ravel().tolist()
    if code is None:  # 24-bit: low three bytes of each little-endian int32
        return b"".join(struct.pack("<i", v)[:3] for v in flat)
    return struct.pack(f"<{len(flat)}{code}", *flat)


def random_values(encoding: str, frames: int, channels: int) -> np.ndarray:
    rng = SPECS[encoding][3]
    if rng is None:
        return RNG.uniform(-1, 1, (frames, channels))
    values = RNG.integers(rng[0], rng[1], (frames, channels), endpoint=True)
    values.flat[:2] = rng  # include both extremes
    return values


def hand_wav(tmp_path: Path, encoding: str, values: np.ndarray, rate: int = 8000,
             extensible: bool = False, name: str = "x.wav") -> Path:
    tag, bits = SPECS[encoding][:2]
    path = tmp_path / name
    path.write_bytes(riff(fmt(tag, values.shape[1], rate, bits, extensible=extensible),
                          (b"data", pack(values, encoding))))
    return path


def scipy_scaled(path: Path) -> np.ndarray:
    """Decode with scipy and scale to [-1, 1] by the same conventions (scipy left-justifies 24-bit in int32)."""
    _, x = wavfile.read(path)
    x = x.reshape(len(x), -1)
    if x.dtype == np.uint8:
        return (x.astype(np.float64) - 128) / 128
    if x.dtype.kind == "i":
        return x / 2.0 ** (8 * x.dtype.itemsize - 1)
    return x.astype(np.float64)


# ---------------------------------------------------------------- decoding

@pytest.mark.parametrize("extensible", [False, True], ids=["plain", "extensible"])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("encoding", list(SPECS))
def test_decoder_matches_scipy(tmp_path, encoding, channels, extensible):
    values = random_values(encoding, 301, channels)
    path = hand_wav(tmp_path, encoding, values, rate=22050, extensible=extensible)
    x, info = read_wav(path)
    assert info == WavInfo(22050, channels, 301, encoding)
    assert x.dtype == np.float32 and x.shape == (301, channels) and x.flags.c_contiguous
    np.testing.assert_allclose(x, scipy_scaled(path), rtol=1e-6, atol=1e-7)
    assert np.abs(x).max() <= 1.0


def test_integer_scaling_exact(tmp_path):
    cases = {"pcm_u8": ([0, 128, 255], [-1, 0, 127 / 128]),
             "pcm16": ([-32768, 0, 16384], [-1, 0, 0.5]),
             "pcm24": ([-2**23, -1, 2**22], [-1, -2.0**-23, 0.5]),
             "pcm32": ([-2**31, 0, 2**30], [-1, 0, 0.5])}
    for encoding, (ints, expected) in cases.items():
        x, _ = read_wav(hand_wav(tmp_path, encoding, np.array(ints)[:, None], name=f"{encoding}.wav"))
        assert x[:, 0].tolist() == expected, encoding


@pytest.mark.parametrize("encoding", ["pcm_u8", "pcm16", "pcm24", "pcm32", "float32", "float64"])
@pytest.mark.parametrize("channels", [1, 3])
def test_write_read_round_trip(tmp_path, encoding, channels):
    x = RNG.uniform(-0.99, 0.99, (1001, channels))  # odd frame count: pad byte for 8/24-bit mono
    path = tmp_path / "rt.wav"
    write_wav(path, x[:, 0] if channels == 1 else x, 16000, encoding)
    y, info = read_wav(path)
    assert info == WavInfo(16000, channels, 1001, encoding)
    step = 2.0 ** (1 - SPECS[encoding][1]) if SPECS[encoding][0] == 1 else 1e-7
    np.testing.assert_allclose(y, x, atol=step)
    np.testing.assert_allclose(y, scipy_scaled(path), rtol=1e-6, atol=1e-7)  # scipy agrees on what we wrote
    assert [p.name for p in tmp_path.iterdir()] == ["rt.wav"]  # no temp file left behind


def test_write_clips_and_rounds(tmp_path):
    path = tmp_path / "clip.wav"
    write_wav(path, np.array([1.5, 1.0, -1.0, -2.0, 0.6 / 32768, -0.4 / 32768]), 8000)
    assert wavfile.read(path)[1].tolist() == [32767, 32767, -32768, -32768, 1, 0]


def test_write_replaces_existing_and_refuses_bad_input(tmp_path):
    path = tmp_path / "a.wav"
    write_wav(path, np.zeros(10), 8000)
    write_wav(path, np.zeros((20, 2)), 8000, "float32")
    assert read_wav(path)[1] == WavInfo(8000, 2, 20, "float32")
    for bad in [dict(samples=np.array([np.nan])), dict(encoding="mp3"), dict(samples=np.zeros((2, 2, 2)))]:
        with pytest.raises(ValueError):
            write_wav(path, **{"samples": np.zeros(4), "sample_rate": 8000, **bad})
    assert [p.name for p in tmp_path.iterdir()] == ["a.wav"]


@pytest.mark.filterwarnings("ignore:Chunk .non-data. not understood")  # scipy skips 'junk'/'cue ' noisily
def test_chunk_walking_list_and_odd_chunk(tmp_path):
    values = np.array([[1, -1], [300, -300], [-32768, 32767]])
    path = tmp_path / "chunks.wav"
    path.write_bytes(riff((b"junk", b"abc"),  # odd size -> pad byte
                          fmt(1, 2, 8000, 16),
                          (b"LIST", b"INFOISFT\x05\x00\x00\x00test\x00"),  # odd inner size too
                          (b"fact", struct.pack("<I", 3)),
                          (b"data", pack(values, "pcm16")),
                          (b"cue ", b"\x00" * 4)))
    x, info = read_wav(path)
    assert info == WavInfo(8000, 2, 3, "pcm16")
    np.testing.assert_array_equal(x, values / 32768)
    np.testing.assert_array_equal(x, scipy_scaled(path))


def test_odd_sized_data_then_chunk(tmp_path):
    values = np.array([[0], [255], [64]])
    path = tmp_path / "u8.wav"
    path.write_bytes(riff(fmt(1, 1, 8000, 8), (b"data", pack(values, "pcm_u8")), (b"LIST", b"x")))
    x, _ = read_wav(path)
    assert x[:, 0].tolist() == [-1.0, 127 / 128, -0.5]


# ---------------------------------------------------------------- load_audio / resample

def test_channel_pick_and_mix(tmp_path):
    x = np.stack([np.full(100, 0.5), np.full(100, -0.25), np.zeros(100)], axis=1)
    path = tmp_path / "three.wav"
    write_wav(path, x, 16000, "float32")
    for ch in range(3):
        y = load_audio(path, 16000, ch)
        assert y.dtype == np.float32 and y.ndim == 1 and y.flags.c_contiguous
        np.testing.assert_array_equal(y, x[:, ch])
    np.testing.assert_allclose(load_audio(path, 16000, "mix"), np.full(100, 0.25 / 3), rtol=1e-6)
    with pytest.raises(AudioError, match="invalid channel"):
        load_audio(path, 16000, "left")


@pytest.mark.parametrize("rate", [44100, 48000])
def test_resample_keeps_length_and_frequency(tmp_path, rate):
    t = np.arange(rate) / rate
    path = tmp_path / "sine.wav"
    write_wav(path, 0.5 * np.sin(2 * np.pi * 1000 * t), rate)
    y = load_audio(path, 16000)
    assert y.shape == (16000,) and y.dtype == np.float32 and y.flags.c_contiguous
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    assert np.argmax(spectrum) == 1000  # 1 Hz bins over one second
    assert abs(np.sqrt(np.mean(y[1000:-1000] ** 2)) - 0.5 / np.sqrt(2)) < 0.01


def test_resample_identity_and_2d():
    x = RNG.standard_normal(480).astype(np.float32)
    assert resample(x, 16000, 16000) is x
    y = resample(np.stack([x, x], axis=1), 48000, 16000)
    assert y.shape == (160, 2) and y.dtype == np.float32


# ---------------------------------------------------------------- bad inputs

def _pcm16_file(frames: int = 100) -> bytes:
    return riff(fmt(1, 1, 8000, 16), (b"data", b"\x01\x00" * frames))


def _float_with(value: float, encoding: str) -> bytes:
    values = np.zeros((16000, 2))
    values[12000, 1] = value
    tag, bits = SPECS[encoding][:2]
    return riff(fmt(tag, 2, 8000, bits), (b"data", values.astype("<" + SPECS[encoding][2]).tobytes()))


BAD = {
    "missing": (None, "file not found"),
    "empty": (b"", "empty file"),
    "text": (b"hello, this is not audio\n" * 4, "not a WAV file"),
    "riff_avi": (riff(fmt(1, 1, 8000, 16), form=b"AVI "), "not a WAV file"),
    "rf64": (riff(fmt(1, 1, 8000, 16), (b"data", b"\0\0"), magic=b"RF64"), "RF64"),
    "rifx": (riff(fmt(1, 1, 8000, 16), (b"data", b"\0\0"), magic=b"RIFX"), "RIFX"),
    "no_data": (riff(fmt(1, 1, 8000, 16), (b"LIST", b"INFO")), "no 'data' chunk"),
    "no_fmt": (riff((b"data", b"\0\0")), "no 'fmt ' chunk"),
    "mulaw": (riff(fmt(7, 1, 8000, 8), (b"data", b"\0" * 10)), "mu-law"),
    "adpcm_ext": (riff(fmt(2, 1, 8000, 4, 256, extensible=True), (b"data", b"\0" * 256)), "ADPCM"),
    "pcm12": (riff(fmt(1, 1, 8000, 12, 2), (b"data", b"\0" * 10)), "12-bit"),
    "zero_channels": (riff(fmt(1, 0, 8000, 16), (b"data", b"\0" * 10)), "0 channels"),
    "zero_rate": (riff(fmt(1, 1, 0, 16), (b"data", b"\0" * 10)), "sample rate of 0"),
    "block_align": (riff(fmt(1, 2, 8000, 16, block_align=2), (b"data", b"\0" * 8)), "block-align mismatch"),
    "header_30": (_pcm16_file()[:30], "truncated"),
    "data_half": (_pcm16_file(1000)[:1044], "declares 2000 bytes of audio but the file holds 1000"),
    "not_aligned": (riff(fmt(1, 2, 8000, 16), (b"data", b"\0" * 10)), "not a whole number of 4-byte frames"),
    "zero_frames": (riff(fmt(1, 1, 8000, 16), (b"data", b"")), "no audio samples"),
    "nan_f32": (_float_with(np.nan, "float32"), "NaN sample at 1.500 s"),
    "inf_f64": (_float_with(-np.inf, "float64"), "inf sample at 1.500 s"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_refused_with_one_line(tmp_path, case):
    content, phrase = BAD[case]
    path = tmp_path / f"bad_{case}.wav"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(AudioError) as err:
        load_audio(path, 16000)
    msg = str(err.value)
    assert "\n" not in msg and path.name in msg and phrase in msg, msg
    assert isinstance(err.value, UserError)


def test_channel_out_of_range(tmp_path):
    path = tmp_path / "stereo.wav"
    write_wav(path, np.zeros((50, 2)), 16000)
    for ch in (2, -1):
        with pytest.raises(AudioError) as err:
            load_audio(path, 16000, ch)
        msg = str(err.value)
        assert "\n" not in msg and "stereo.wav" in msg and "has 2 channel(s)" in msg, msg
