"""The DCASE 2020 Task 2 dense autoencoder in Keras, its fit, and its TFLite export (int8 and float).

TensorFlow is imported here and only here (``pip install 'edge-monitor[train]'``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from typing import Callable, Iterator

import numpy as np

from edge_monitor.core.quiet import held_back

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

@contextlib.contextmanager
def _captured_output() -> Iterator[None]:
    """Hold back what the converter prints (Keras signatures, MLIR logs on fd 1/2); show it only on failure."""
    with held_back((1, 2), only_on_error=True, limit=20000), contextlib.redirect_stdout(sys.stderr):
        yield


try:
    with _captured_output():  # TensorFlow's start-up chatter (oneDNN, absl) is not for the user
        import keras
        import tensorflow as tf
except ImportError as exc:  # pragma: no cover - depends on the install
    from edge_monitor.core.errors import UserError

    raise UserError(f"training needs TensorFlow ({exc}); install it: pip install 'edge-monitor[train]'") from None

tf.get_logger().setLevel("ERROR")  # retracing notes and the like; errors still raise

ARCHITECTURE = "dense autoencoder 640-128x4-8-128x4-640, BatchNorm+ReLU (DCASE 2020 Task 2 baseline)"
ARCHITECTURES = {  # --architecture → (score target in the manifest, description template)
    "ae": ("window", "dense autoencoder {i}-128x4-8-128x4-{o}, BatchNorm+ReLU (DCASE 2020 Task 2 baseline)"),
    "idnn": ("centre_frame", ("dense interpolation network {i}-128x4-8-128x4-{o}, BatchNorm+ReLU: the window "
                              "without its centre frame in, the centre frame out (Suefusa et al., ICASSP 2020)")),
}


def describe(architecture: str, input_dim: int, output_dim: int) -> str:
    return ARCHITECTURES[architecture][1].format(i=input_dim, o=output_dim)


def build(input_dim: int, hidden: int = 128, bottleneck: int = 8, seed: int = 0,
          output_dim: int | None = None) -> keras.Model:
    """Input → 4×(Dense 128, BN, ReLU) → Dense 8, BN, ReLU → 4×(Dense 128, BN, ReLU) → Dense output_dim.

    ``output_dim`` None: ``input_dim`` (the autoencoder); the interpolation network (IDNN) reads the
    window without its centre frame and outputs the centre frame (``n_mels`` values).
    """
    # Layer names (they end up in the .tflite) and random state must not depend on what this process
    # built before: a fleet trained in one process or in many gives byte-identical bundles.
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((input_dim,), name="window")
    x = inputs
    for units in [hidden] * 4 + [bottleneck] + [hidden] * 4:
        x = keras.layers.Dense(units)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    outputs = keras.layers.Dense(output_dim or input_dim, name="reconstruction")(x)
    model = keras.Model(inputs, outputs, name="dcase2020_autoencoder" if output_dim in (None, input_dim) else "idnn")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mean_squared_error")
    return model


class _Progress(keras.callbacks.Callback):
    def __init__(self, epochs: int, report: Callable[..., None]):
        super().__init__()
        self.epochs = epochs
        self.report = report
        self.start = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        elapsed = time.monotonic() - self.start
        per_epoch = elapsed / (epoch + 1)
        self.report(
            "epoch",
            epoch=f"{epoch + 1}/{self.epochs}",
            loss=round(float(logs.get("loss", float("nan"))), 4),
            val_loss=round(float(logs.get("val_loss", float("nan"))), 4),
            elapsed_s=round(elapsed, 1),
            left_at_most_s=round(per_epoch * (self.epochs - epoch - 1), 1),
        )


def fit(
    model: keras.Model,
    train: np.ndarray,
    val: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    patience: int,
    report: Callable[..., None],
    train_target: np.ndarray | None = None,
    val_target: np.ndarray | None = None,
) -> dict:
    """Fit with early stopping on the held-out clips' windows; returns the loss history and epochs run.

    Targets default to the inputs (autoencoder); the interpolation network gets the centre frames."""
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
    history = model.fit(
        train,
        train if train_target is None else train_target,
        validation_data=(val, val if val_target is None else val_target),
        epochs=epochs,
        batch_size=batch_size,
        shuffle=True,
        verbose=0,
        callbacks=[stop, _Progress(epochs, report)],
    )
    losses = history.history
    best = int(np.argmin(losses["val_loss"]))
    return {
        "loss": [float(v) for v in losses["loss"]],
        "val_loss": [float(v) for v in losses["val_loss"]],
        "epochs_run": len(losses["loss"]),
        "best_epoch": best + 1,
    }


def predict(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return model.predict(x, batch_size=4096, verbose=0)


def export_tflite(model: keras.Model, representative: np.ndarray | None) -> bytes:
    """Float32 TFLite when ``representative`` is None, else full-integer int8 with int8 input and output."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if representative is not None:
        def samples():
            for row in representative:
                yield [row[None, :].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = samples
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    with _captured_output(), warnings.catch_warnings():
        # int8 input statistics come from the representative set; TF warns about the old API path
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        return converter.convert()
