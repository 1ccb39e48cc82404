#!/usr/bin/env bash
# Runs every test, after setting up what the tests need:
#  0. system packages  tests/setup.sh: probes each one and installs the missing ones with apt-get when
#                      run as root (or with password-less sudo); otherwise one line naming the exact
#                      `apt-get install` to run, and exit code 2
#  1. .venv            edge-monitor with the train and test extras (TensorFlow, librosa, LiteRT)
#  2. .venv-tflite     a small sensor-node environment with tflite-runtime (numpy<2) instead of LiteRT,
#                      proving the second interpreter on the committed demo bundle
# Arguments go to the main pytest run (e.g. `bash tests/run.sh -k features`).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHON PIP_DISABLE_PIP_VERSION_CHECK=1
# pip, quietly; setuptools' note on every editable build ("Editable installation. Please be careful with
# folders ...") is information, not a problem, so it is filtered out (its deprecations still show)
pip_install() { local python=$1; shift; PYTHONWARNINGS="ignore:Editable installation:UserWarning" "$python" -m pip install --quiet "$@"; }

bash tests/setup.sh

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  pip_install .venv/bin/python --upgrade pip
fi
pip_install .venv/bin/python -e '.[train,test]'
# Fleet training (Dask LocalCluster, worker processes) and MLflow start threads and processes of their own
# that outlive their tests: they run in a pytest process of their own, after the main run.
ISOLATED=(tests/test_fleet.py tests/test_tracking.py)
.venv/bin/python -m pytest "${ISOLATED[@]/#/--ignore=}" "$@"
if [ $# -eq 0 ]; then .venv/bin/python -m pytest -p no:cacheprovider "${ISOLATED[@]}"; fi

if [ ! -x .venv-tflite/bin/python ]; then
  "$PYTHON" -m venv .venv-tflite
  pip_install .venv-tflite/bin/python --upgrade pip
fi
pip_install .venv-tflite/bin/python 'numpy<2' scipy pyyaml structlog paho-mqtt sounddevice tflite-runtime \
  'protobuf>=7.35.1' prometheus-client pytest
pip_install .venv-tflite/bin/python --no-deps -e .
# the sensor-node tests (no TensorFlow, no librosa) with tflite-runtime forced, on numpy 1.x:
# the pipeline, replay and the daemon end to end (PulseAudio, mosquitto) as a Pi with tflite-runtime runs them
EDGE_MONITOR_TFLITE=tflite_runtime .venv-tflite/bin/python -m pytest -p no:cacheprovider \
  tests/test_interpreters.py tests/test_cli.py tests/test_audio.py tests/test_data.py tests/test_synth.py \
  tests/test_pipeline.py tests/test_detector.py tests/test_replay.py tests/test_ring.py tests/test_daemon.py \
  tests/test_sparkplug.py tests/test_quiet.py tests/test_help.py tests/test_loop.py
