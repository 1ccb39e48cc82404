"""Pictures without an image library: a log-mel spectrogram as an 8-bit RGB PNG.

There is no image library on the node (Pillow would add ~10 MB to every node for one picture), and an
8-bit RGB PNG is a few chunks around a zlib stream: signature, IHDR, IDAT (each row prefixed with filter
byte 0), IEND, each chunk with its CRC. Evidence clips (``node/evidence.py``) and replay reports
(``core/report.py``) draw their log-mel with these functions.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from edge_monitor.core.features import FeatureParams, log_mel

_ANCHORS = np.array([[0, 0, 4], [80, 18, 123], [182, 54, 121], [251, 136, 97], [252, 253, 191]], np.float64)


def colormap(values: np.ndarray) -> np.ndarray:
    """uint8 (h, w) → uint8 RGB (h, w, 3) on a magma-like ramp (dark = quiet, light = loud)."""
    x = values.astype(np.float64) / 255.0 * (len(_ANCHORS) - 1)
    at = np.arange(len(_ANCHORS))
    return np.stack([np.interp(x, at, _ANCHORS[:, c]) for c in range(3)], axis=-1).round().astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    """A uint8 RGB image (height, width, 3) as the bytes of a PNG file."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or 0 in rgb.shape:
        raise ValueError(f"expected a non-empty uint8 (height, width, 3) image, got {rgb.dtype} {rgb.shape}")
    height, width, _ = rgb.shape

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = np.concatenate((np.zeros((height, 1), np.uint8), rgb.reshape(height, width * 3)), axis=1)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b""))


def log_mel_image(frames: np.ndarray) -> np.ndarray:
    """Log-mel frames ``(n_frames, n_mels)`` as uint8 RGB ``(n_mels, n_frames, 3)``: time left to right, low
    bands at the bottom, the top 80 dB of the frames' range mapped onto the colour ramp."""
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim != 2 or frames.shape[1] == 0:
        raise ValueError(f"expected (n_frames, n_mels) log-mel frames, got {frames.shape}")
    if len(frames) == 0:
        frames = np.zeros((1, frames.shape[1]), np.float32)
    hi = float(frames.max())
    lo = max(float(np.percentile(frames, 1)), hi - 80.0)  # log-mel is in dB (10·log10 of the mel power)
    scaled = np.clip((frames - lo) / max(hi - lo, 1e-6), 0, 1) * 255
    return colormap(scaled.T[::-1].astype(np.uint8))


def log_mel_png(samples: np.ndarray, params: FeatureParams) -> bytes:
    """The clip's log-mel (the model's own features) as a PNG (:func:`log_mel_image`)."""
    frames = log_mel(samples, params)
    if len(frames) == 0:
        frames = np.zeros((1, params.n_mels), np.float32)
    return png_bytes(log_mel_image(frames))
