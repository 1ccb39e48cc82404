#!/usr/bin/env bash
# The arm64 stage: the node side installed and tested on arm64 (Debian 12 bookworm, Python 3.11 = the
# base of Raspberry Pi OS Bookworm) on this x86_64 machine, by qemu user-mode emulation of a
# root file system built by mmdebstrap. Called by .ci/run after the main suite; see README "Raspberry Pi and
# Jetson (arm64)".
#
#   sudo bash tests/arm64.sh [--rootfs-only]
#
# 1. x86 reference: `edge-monitor replay` of the demo and the shared MIMII clips, natively, written to a
#    JSON file (tests/arm64_parity.py); the arm64 test run compares against it.
# 2. Root file system, CACHED in $ARM64_CACHE (default /var/cache/edge-monitor/arm64) under a key made
#    of everything it contains (suite, packages, this recipe's version). Built in a .partial directory
#    and renamed only when complete, so a half-built one is never used; other keys are removed.
# 3. The node side from a wheel built ONCE on the host (pure Python), installed inside the rootfs by
#    deploy/install.sh (--only-binary: aarch64 wheels only, nothing compiles), twice (idempotent).
# 4. The node-side tests that need no PulseAudio, by name, under emulation: with LiteRT (the wheel's
#    dependency) and with tflite-runtime 2.14 + numpy<2; then the replay parity test, and the
#    daemon's memory and the replay/feature speed as a ratio to native (bench/arm64.py).
#
# Two emulator traps are handled: Debian 12's qemu 7.2 shows the host's x86 /proc/cpuinfo to the guest
# (LiteRT's CPU detection then segfaults): an aarch64 cpuinfo is bind-mounted over /proc/cpuinfo; qemu's
# default CPU "max" exposes SME and the int8 model returns wrong numbers: QEMU_CPU is pinned to a real
# core of the target boards (ARM64_CPU: cortex-a72 = Pi 4 (default), cortex-a76 = Pi 5, cortex-a57 or
# cortex-a78 = Jetson).
#
# Knobs: ARM64_CACHE, ARM64_CPU, ARM64_TFLITE=0 (skip the tflite-runtime run), ARM64_HOST_PYTHON (the
# native interpreter with LiteRT; default .venv/bin/python), ARM64_HOST_TFLITE_PYTHON (the native one with
# tflite-runtime, for the x86 tflite-runtime reference; default .venv-tflite/bin/python), EDGE_MONITOR_MIMII,
# MIRROR (default: the host's Debian mirror). The native runs import this tree (PYTHONPATH), whatever
# edge-monitor their venv has installed; inside the rootfs the installed wheel is imported, never the tree.
# Skips with one line (exit 0) only where the machine cannot emulate arm64 (not x86_64, not root, no
# binfmt_misc). Exit status: 0 passed or skipped, 1 a test or step failed.
set -euo pipefail
# The whole stage is one function, read in full before it runs: editing this file during a run
# cannot change what the run does.
main() {
cd "$(dirname "$0")/.."
SRC=$(pwd)
T0=$(date +%s)
STEP_T=$T0
STEP_NAME=""
TIMES=()
step() {  # step NAME: close the previous step (print its time) and open the next
  local now; now=$(date +%s)
  if [ -n "$STEP_NAME" ]; then TIMES+=("$(printf '%5ds  %s' $((now - STEP_T)) "$STEP_NAME")"); fi
  STEP_NAME=$1; STEP_T=$now
  echo; echo "=== arm64 [$((now - T0))s] $1"
}
skip() { echo "arm64 stage SKIPPED: $*"; exit 0; }
fail() { echo "arm64 stage FAILED: $*" >&2; FAIL=1; }
FAIL=0

ROOTFS_ONLY=0
[ "${1:-}" = --rootfs-only ] && ROOTFS_ONLY=1
[ "${1:-}" = --install-only ] && ROOTFS_ONLY=2  # for working on the stage: stop after the installs
# --host-tools: only install qemu-user-static and mmdebstrap on the host (apt), so that .ci/run can build
# the rootfs (--rootfs-only, no host apt) in the background while tests/run.sh uses apt
[ "${1:-}" = --host-tools ] && ROOTFS_ONLY=3

# --- can this machine emulate arm64? -------------------------------------------------------------
[ "$(uname -m)" = x86_64 ] || skip "host is $(uname -m), not x86_64 (on an arm64 host run the tests natively)"
[ "$(id -u)" = 0 ] || skip "needs root (mmdebstrap, chroot, binfmt_misc); run: sudo bash tests/arm64.sh"
CACHE=${ARM64_CACHE:-/var/cache/edge-monitor/arm64}
CPU=${ARM64_CPU:-cortex-a72}
SUITE=bookworm
HOSTPY=${ARM64_HOST_PYTHON:-$SRC/.venv/bin/python}
HOSTTFL=${ARM64_HOST_TFLITE_PYTHON:-$SRC/.venv-tflite/bin/python}
MIMII=${EDGE_MONITOR_MIMII:-$SRC/../shared/data}
if [ "$ROOTFS_ONLY" = 0 ] || [ "$ROOTFS_ONLY" = 2 ]; then
  [ -x "$HOSTPY" ] || { echo "arm64 stage: $HOSTPY not found (run tests/run.sh first or set ARM64_HOST_PYTHON)" >&2; exit 1; }
  if [ "${ARM64_TFLITE:-1}" = 1 ] && [ ! -x "$HOSTTFL" ]; then
    echo "arm64 stage: $HOSTTFL not found: the x86 tflite-runtime reference needs it (run tests/run.sh first, set ARM64_HOST_TFLITE_PYTHON, or ARM64_TFLITE=0)" >&2; exit 1
  fi
fi
export PYTHONPATH=$SRC  # the native runs (references, benchmarks) use this tree, not what a venv has installed

step "host tools: qemu-user-static, mmdebstrap"
if ! command -v mmdebstrap >/dev/null || [ ! -x /usr/bin/qemu-aarch64-static ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq qemu-user-static mmdebstrap >/dev/null \
    || skip "cannot install qemu-user-static and mmdebstrap with apt"
fi
qemu-aarch64-static --version | head -1
[ "$ROOTFS_ONLY" = 3 ] && exit 0
B=/proc/sys/fs/binfmt_misc
[ -e $B/status ] || mount -t binfmt_misc binfmt_misc $B 2>/dev/null || skip "binfmt_misc cannot be mounted here"
if [ ! -e $B/qemu-aarch64 ]; then
  # F: the interpreter is opened now, so chroot needs no copy of qemu inside the rootfs
  echo ':qemu-aarch64:M:0:\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/bin/qemu-aarch64-static:F' \
    >$B/register 2>/dev/null || skip "cannot register qemu-aarch64 with binfmt_misc"
fi
grep -q '^enabled' $B/qemu-aarch64 || skip "binfmt_misc entry qemu-aarch64 is disabled"
grep -q '^flags:.*F' $B/qemu-aarch64 || { echo "arm64 stage: binfmt_misc qemu-aarch64 lacks the F flag (chroot would not find qemu)" >&2; exit 1; }

# --- the root file system (cached) ---------------------------------------------------------------
host_mirror() {
  { grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
    grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}'; } |
    grep -v security | head -1 || true
}
MIRROR=${MIRROR:-$(host_mirror)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
# Everything the rootfs contains is in RECIPE; its hash names the cache. Change RECIPE_VERSION when
# the way it is built changes.
# libpulse0 + ALSA's pulse plugin (only its .so and conf, taken from libasound2-plugins' .deb: the
# package itself would pull in libavcodec) let the emulated daemon read a host PulseAudio null sink.
# v2: mmdebstrap (one dpkg run for the essential set: 329 s cold here, debootstrap's two stages 494 s);
# openssl (the MQTT TLS tests make their certificates with it) is in the recipe, no longer added after.
RECIPE_VERSION=2
PACKAGES=python3,python3-venv,libportaudio2,ca-certificates,mosquitto,passwd,libpulse0,openssl
RECIPE="v$RECIPE_VERSION arm64 $SUITE minbase mmdebstrap $PACKAGES +alsa-pulse-plugin"
KEY=$(printf '%s' "$RECIPE" | sha256sum | cut -c1-16)
fetch_deb() {  # fetch_deb ROOTFS PACKAGE OUT: the arm64 .deb, checked against the rootfs's signed index
  local pkgs entry file sum
  pkgs=$1/.edge-monitor-packages  # the index apt verified (a copy; the lists themselves are removed)
  entry=$(awk -v RS= -v p="Package: $2" 'index($0, p "\n") == 1' "$pkgs")
  file=$(printf '%s\n' "$entry" | awk '/^Filename:/{print $2}')
  sum=$(printf '%s\n' "$entry" | awk '/^SHA256:/{print $2}')
  [ -n "$file" ] && [ -n "$sum" ] || { echo "arm64 stage: $2 not in $pkgs" >&2; exit 1; }
  curl -fsS --retry 3 -o "$3" "$MIRROR/$file" || { echo "arm64 stage: cannot download $MIRROR/$file" >&2; exit 1; }
  echo "$sum  $3" | sha256sum -c --quiet || { echo "arm64 stage: $file: sha256 mismatch" >&2; exit 1; }
}
ROOTFS=$CACHE/rootfs-$KEY
mkdir -p "$CACHE"

step "rootfs $ROOTFS ($RECIPE)"
if [ -f "$ROOTFS/.edge-monitor-rootfs" ] && [ "$(cat "$ROOTFS/.edge-monitor-rootfs")" = "$RECIPE" ]; then
  echo "cached (built $(date -u -r "$ROOTFS/.edge-monitor-rootfs" +%FT%TZ))"
else
  for old in "$CACHE"/rootfs-*; do [ -e "$old" ] && { echo "removing $old (other key or half-built)"; rm -rf --one-file-system "$old"; }; done
  PART=$ROOTFS.partial
  step "mmdebstrap (apt natively, dpkg under qemu) from $MIRROR"
  # the apt lists are kept for fetch_deb (the signed index), then removed
  QEMU_CPU=$CPU timeout 1800 mmdebstrap --mode=root --arch=arm64 --variant=minbase --include="$PACKAGES" \
    --skip=cleanup/apt/lists "$SUITE" "$PART" "$MIRROR" >"$CACHE/mmdebstrap.log" 2>&1 \
    || { tail -20 "$CACHE/mmdebstrap.log"; echo "arm64 stage: mmdebstrap failed" >&2; exit 1; }
  step "ALSA pulse plugin from libasound2-plugins (arm64 .deb, checked against the signed index)"
  cp "$(ls "$PART"/var/lib/apt/lists/*_main_binary-arm64_Packages)" "$PART/.edge-monitor-packages"
  rm -rf "$PART"/var/lib/apt/lists/*_Packages
  fetch_deb "$PART" libasound2-plugins "$CACHE/alsa-plugins.deb"
  rm -rf "$CACHE/alsa-plugins"; dpkg-deb -x "$CACHE/alsa-plugins.deb" "$CACHE/alsa-plugins"
  mkdir -p "$PART/usr/lib/aarch64-linux-gnu/alsa-lib" "$PART/etc/alsa/conf.d"
  cp "$CACHE/alsa-plugins/usr/lib/aarch64-linux-gnu/alsa-lib/"libasound_module_{pcm,ctl,conf}_pulse.so \
    "$PART/usr/lib/aarch64-linux-gnu/alsa-lib/"
  cp "$CACHE/alsa-plugins/usr/share/alsa/alsa.conf.d/50-pulseaudio.conf" "$PART/etc/alsa/conf.d/"
  rm -rf "$CACHE/alsa-plugins" "$CACHE/alsa-plugins.deb"
  printf '#!/bin/sh\nexit 101\n' >"$PART/usr/sbin/policy-rc.d"; chmod +x "$PART/usr/sbin/policy-rc.d"  # no services
  rm -rf "$PART/var/cache/apt/archives/"*.deb
  printf '%s' "$RECIPE" >"$PART/.edge-monitor-rootfs"
  mv "$PART" "$ROOTFS"
fi
du -sxh "$ROOTFS" | awk '{print "rootfs size: " $1}'
[ "$ROOTFS_ONLY" = 1 ] && { step done; printf '%s\n' "${TIMES[@]}"; exit 0; }

# --- the run: a scratch directory on the host, the enter wrapper --------------------------------
RUN=$(mktemp -d /tmp/em-arm64-run.XXXXXX)
trap 'rm -rf "$RUN"' EXIT
mkdir -p "$RUN/tmp"
# A Raspberry Pi 4 /proc/cpuinfo (Cortex-A72, part 0xd08), one entry per host CPU (the cpuinfo trap).
: >"$RUN/cpuinfo"
for i in $(seq 0 $(( $(nproc) - 1 ))); do
  printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n' "$i" >>"$RUN/cpuinfo"
done
printf 'Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B\n' >>"$RUN/cpuinfo"
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
# mmdebstrap writes no /etc/hosts: without it "localhost" does not resolve in the rootfs (the MQTT tests'
# mosquitto on loopback)
grep -qw localhost "$ROOTFS/etc/hosts" 2>/dev/null \
  || printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$ROOTFS/etc/hosts"
cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/host-ca.crt"  # behind a TLS-intercepting proxy
mkdir -p "$ROOTFS/opt/shared-data" "$ROOTFS$SRC"
# $RUN/enter CMD...: CMD inside the rootfs, in a private mount namespace (nothing leaks to the host),
# with /proc (aarch64 cpuinfo over it), /sys, /dev, the host's /tmp (PulseAudio sockets, scratch
# files), the shared MIMII clips read-only at /opt/shared-data, this tree read-only at its own path (for
# the benchmarks' bundle paths), QEMU_CPU pinned and a clean environment (PULSE_*, EDGE_MONITOR_*,
# TMPDIR, XDG_RUNTIME_DIR and the thread-count variables pass through). The process keeps the PID of
# the `enter` call (exec all the way), so a benchmark can watch it from the host.
cat >"$RUN/enter" <<ENTER
#!/bin/bash
exec unshare -m --propagation private /bin/bash -c '
  set -e
  R=$ROOTFS
  mount -t proc proc "\$R/proc"; mount --bind /sys "\$R/sys"; mount --rbind /dev "\$R/dev"
  mount --bind "$RUN/cpuinfo" "\$R/proc/cpuinfo"
  mount --bind /tmp "\$R/tmp"
  if [ -d "$MIMII" ]; then mount --bind -o ro "$MIMII" "\$R/opt/shared-data"; fi
  mount --bind -o ro "$SRC" "\$R$SRC"
  pass=()
  for v in \$(compgen -e); do
    case \$v in PULSE_*|EDGE_MONITOR_*|TMPDIR|XDG_RUNTIME_DIR|OMP_NUM_THREADS|OPENBLAS_NUM_THREADS) pass+=("\$v=\${!v}");; esac
  done
  QEMU_CPU=$CPU exec chroot "\$R" /usr/bin/env -i QEMU_CPU=$CPU HOME=/root LANG=C.UTF-8 \\
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin PIP_CERT=/etc/ssl/host-ca.crt \\
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off PYTHONDONTWRITEBYTECODE=1 "\${pass[@]}" "\$@"
' _ "\$@"
ENTER
chmod +x "$RUN/enter"
enter() { timeout "${TMO:-900}" "$RUN/enter" "$@"; }
step "inside: $(enter /bin/sh -c 'uname -m; python3 --version; grep -m1 "CPU part" /proc/cpuinfo' | tr '\n' ' ')"

# --- 1. the x86 reference and the wheel, natively ---------------------------------------------
step "x86 reference replay (native, LiteRT): demo + shared MIMII clips"
"$HOSTPY" tests/arm64_parity.py write "$RUN/reference.json" "$MIMII"
if [ "${ARM64_TFLITE:-1}" = 1 ]; then
  step "x86 reference replay (native, tflite-runtime $HOSTTFL): demo + shared MIMII clips"
  EDGE_MONITOR_TFLITE=tflite_runtime "$HOSTTFL" tests/arm64_parity.py write "$RUN/reference-tflite.json" "$MIMII"
fi
step "wheel, built once (native, pure Python)"
mkdir -p "$RUN/src"
tar -C "$SRC" --exclude=./.git --exclude='./.venv*' --exclude=./build --exclude=./dist --exclude='*.egg-info' \
  --exclude=__pycache__ --exclude=.pytest_cache -cf - . | tar -C "$RUN/src" -xf -
"$HOSTPY" -m pip wheel --quiet --no-deps -w "$RUN/dist" "$RUN/src" >"$RUN/wheel.log" 2>&1 \
  || { tail -20 "$RUN/wheel.log"; echo "arm64 stage: pip wheel failed" >&2; exit 1; }
WHEEL=$(ls "$RUN"/dist/edge_monitor-*.whl)
echo "$(basename "$WHEEL")"

# --- 2. the node side inside the rootfs, the way a node gets it ---------------------------------
step "copy the node files into the rootfs: deploy/, systemd/, dist/ (the wheel); tests/, bench/ to test it"
STAGE=$ROOTFS/opt/stage
rm -rf "$STAGE"; mkdir -p "$STAGE/dist"
cp -R deploy systemd tests bench config.yaml pyproject.toml "$STAGE/"
cp "$WHEEL" "$STAGE/dist/"
cp "$RUN"/reference*.json "$STAGE/"
# the venvs are part of the cache: keyed on the requirements; a key that does not match (other
# requirements, or a run that stopped half-way) wipes them
TEST_REQS="pytest"  # not librosa: its numba JIT takes many minutes under emulation (test_features skips only its librosa comparisons)
TFLITE_REQS="numpy<2 scipy pyyaml structlog paho-mqtt sounddevice tflite-runtime==2.14.0 pytest"
DEPS_KEY="$(sed -n '/^dependencies = \[/,/^\]/p' pyproject.toml | tr -d ' \n') | $TEST_REQS | $TFLITE_REQS"
STAMP=$ROOTFS/opt/.edge-monitor-deps
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$DEPS_KEY" ]; then
  echo "requirements changed or a run stopped half-way: fresh virtual environments"
  rm -rf "$ROOTFS/opt/edge-monitor/venv" "$ROOTFS/opt/venv-tflite" "$STAMP"
fi

VENV=/opt/edge-monitor/venv
# The two installs are independent (two venvs) and each is one emulated pip on one core: they run side
# by side, each into its own log, printed when both are done.
if [ "${ARM64_TFLITE:-1}" = 1 ]; then
  step "deploy/install.sh (LiteRT, aarch64 wheels only) inside the rootfs, beside the tflite-runtime venv /opt/venv-tflite ($TFLITE_REQS, then the wheel --no-deps)"
else
  step "deploy/install.sh (LiteRT, aarch64 wheels only) inside the rootfs"
fi
( TMO=1500 enter bash /opt/stage/deploy/install.sh --no-apt --no-enable --pip-args "--only-binary=:all:" ) \
  >"$RUN/install.log" 2>&1 &
INSTALL_PID=$!
TFLITE_PID=""
if [ "${ARM64_TFLITE:-1}" = 1 ]; then
  ( TMO=1500 enter /bin/sh -c "[ -x /opt/venv-tflite/bin/python ] || python3 -m venv /opt/venv-tflite
    /opt/venv-tflite/bin/python -m pip install --quiet --only-binary=:all: $(printf "'%s' " $TFLITE_REQS) &&
    /opt/venv-tflite/bin/python -m pip install --quiet --no-deps --force-reinstall /opt/stage/dist/$(basename "$WHEEL")" ) \
    >"$RUN/install-tflite.log" 2>&1 &
  TFLITE_PID=$!
fi
install_rc=0; wait $INSTALL_PID || install_rc=$?
tflite_rc=0; [ -z "$TFLITE_PID" ] || wait $TFLITE_PID || tflite_rc=$?
echo "--- deploy/install.sh:"; cat "$RUN/install.log"
[ -z "$TFLITE_PID" ] || { echo "--- tflite-runtime venv:"; cat "$RUN/install-tflite.log"; }
[ $install_rc = 0 ] || { echo "arm64 stage: install.sh failed (exit $install_rc)" >&2; exit 1; }
[ $tflite_rc = 0 ] || { echo "arm64 stage: tflite-runtime venv failed (exit $tflite_rc)" >&2; exit 1; }
step "deploy/install.sh again: must change nothing"
out=$(enter bash /opt/stage/deploy/install.sh --no-apt --no-enable --pip-args "--only-binary=:all:" 2>&1) || true
printf '%s\n' "$out" | tail -3
printf '%s\n' "$out" | grep -q "nothing to do, everything unchanged" || fail "second install.sh run was not idempotent"
step "test dependencies into $VENV: $TEST_REQS"
TMO=1500 enter $VENV/bin/python -m pip install --quiet --only-binary=:all: $TEST_REQS \
  || { echo "arm64 stage: pip install $TEST_REQS failed" >&2; exit 1; }
enter $VENV/bin/python -c 'import platform, sys, numpy, scipy, ai_edge_litert, sounddevice, edge_monitor
print(platform.machine(), sys.version.split()[0], "numpy", numpy.__version__, "scipy", scipy.__version__,
      "portaudio", sounddevice.get_portaudio_version()[1], "edge_monitor from", edge_monitor.__file__)'
printf '%s' "$DEPS_KEY" >"$STAMP"
# tests name repository paths (config.yaml's edge_monitor/demo/fan-id_00): the installed package's demo
# serves them. No __init__.py here, so `import edge_monitor` still finds the installed package only.
mkdir -p "$STAGE/edge_monitor"
ln -sfn "$(ls -d "$ROOTFS"$VENV/lib/python3*/site-packages/edge_monitor/demo | sed "s|^$ROOTFS||")" "$STAGE/edge_monitor/demo"
[ "$ROOTFS_ONLY" = 2 ] && exit 0

# --- 3. the node-side tests (no PulseAudio), selected by file name ----------------------------
NODE_TESTS="test_pipeline test_replay test_audio test_features test_detector test_ring test_config test_bundle
  test_interpreters test_mqtt test_arm64_parity"
FILES=""
for t in $NODE_TESTS; do
  if [ -f "$STAGE/tests/$t.py" ]; then FILES="$FILES tests/$t.py"; else echo "note: tests/$t.py does not exist (any more)"; fi
done
export EDGE_MONITOR_PARITY_DATA=/opt/shared-data
export EDGE_MONITOR_MIMII=/opt/shared-data/mimii-fan-id00 TMPDIR=$RUN/tmp
run_tests() {  # run_tests LABEL PYTHON [ENV=VALUE...]: one pytest run, its output to $RUN/pytest-LABEL.log
  local label=$1 py=$2; shift 2
  mkdir -p "$RUN/tmp/$label"  # its own TMPDIR: pytest's numbered temp dirs of two sessions must not meet
  # what the tests import from /opt/stage: the installed wheel (site-packages), not a tree
  enter /usr/bin/env TMPDIR=/tmp/$(basename "$RUN")/tmp/$label "$@" /bin/sh -c "cd /opt/stage && $py -c 'import edge_monitor, sys; print(\"edge_monitor from\", edge_monitor.__file__); sys.exit(\"edge_monitor is not imported from the installed wheel\" if \"site-packages\" not in edge_monitor.__file__ else 0)' &&
    $py -m pytest -p no:cacheprovider -q -rfEs --durations=15 $FILES" >"$RUN/pytest-$label.log" 2>&1
}
parity_figures() {  # parity_figures LABEL REFERENCE: clip-score differences and replay CPU against the x86 run
  local out=$RUN/tmp/parity-$1.json
  [ -f "$out" ] || { fail "parity test ($1) wrote no summary"; return; }
  "$HOSTPY" - "$2" "$out" "$1" <<'PY'
import json, sys
sys.path.insert(0, "tests")
from arm64_parity import compare, max_relative_difference
ref, got = (json.load(open(p)) for p in sys.argv[1:3])
print(f"PARITY {sys.argv[3]}: {len(ref['files'])} clips, x86 vs arm64 ({got['python']}): largest relative "
      f"clip-score difference {max_relative_difference(ref, got):.2e}; differences that matter: "
      f"{len(compare(ref, got))}; replay CPU {got['replay_cpu_s']:.1f} s emulated vs {ref['replay_cpu_s']:.2f} s "
      f"native = {got['replay_cpu_s'] / ref['replay_cpu_s']:.0f}x")
PY
}

# each interpreter's arm64 replay against the same interpreter's x86 replay. The two runs are
# independent and each is one emulated process: side by side, one per core.
LABELS="litert"; [ "${ARM64_TFLITE:-1}" = 1 ] && LABELS="litert tflite-runtime"
step "pytest under arm64, side by side: $LABELS;$FILES"
EDGE_MONITOR_PARITY_OUT=/tmp/$(basename "$RUN")/tmp/parity-litert.json \
  EDGE_MONITOR_PARITY_REFERENCE=/opt/stage/reference.json TMO=1800 run_tests litert $VENV/bin/python &
PIDS=($!)
if [ "${ARM64_TFLITE:-1}" = 1 ]; then
  EDGE_MONITOR_PARITY_OUT=/tmp/$(basename "$RUN")/tmp/parity-tflite.json \
    EDGE_MONITOR_PARITY_REFERENCE=/opt/stage/reference-tflite.json TMO=1800 \
    run_tests tflite-runtime /opt/venv-tflite/bin/python EDGE_MONITOR_TFLITE=tflite_runtime &
  PIDS+=($!)
fi
i=0
for label in $LABELS; do
  rc=0; wait "${PIDS[$i]}" || rc=$?; i=$((i + 1))
  echo; echo "--- pytest under arm64, $label (exit $rc):"; cat "$RUN/pytest-$label.log"
  [ $rc = 0 ] || fail "pytest ($label) exit $rc"
done
parity_figures litert "$RUN/reference.json"
[ "${ARM64_TFLITE:-1}" = 1 ] && parity_figures tflite "$RUN/reference-tflite.json"

# --- 4. figures under emulation, each beside the native one of the same run -----------------------
step "features: native vs emulated (bench/features.py), ratio only"
nat=$(OMP_NUM_THREADS=1 "$HOSTPY" bench/features.py --seconds 60 2>&1 | grep "of audio per CPU second")
emu=$(enter /bin/sh -c "cd /opt/stage && OMP_NUM_THREADS=1 $VENV/bin/python bench/features.py --seconds 60" 2>&1 | grep "of audio per CPU second") || true
printf 'native:   %s\nemulated: %s\n' "$nat" "$emu" | sed 's/  */ /g'
"$HOSTPY" - "$nat" "$emu" <<'PY' || fail "features benchmark under emulation"
import re, sys
nat, emu = ([float(x) for x in re.findall(r"(\d+) s of audio per CPU second", s)] for s in sys.argv[1:3])
assert len(nat) == len(emu) == 2, "benchmark output not understood"
print(f"emulation costs {nat[0] / emu[0]:.0f}x (log_mel) and {nat[1] / emu[1]:.0f}x (StreamingLogMel, live) the "
      "native CPU time: a ratio to expose pathologies, not a Pi figure")
PY
step "memory floor, one import at a time: native vs emulated (bench/memory_floor.py)"
echo "native x86 (LiteRT):"; "$HOSTPY" bench/memory_floor.py 2>&1 | grep -v '^INFO' || fail "native memory floor"
echo "arm64 (LiteRT):"
"$HOSTPY" bench/memory_floor.py --emulated --python-cmd "$RUN/enter $VENV/bin/python" 2>&1 | grep -v '^INFO' \
  || fail "emulated memory floor (LiteRT)"
if [ "${ARM64_TFLITE:-1}" = 1 ]; then
  echo "arm64 (tflite-runtime, numpy<2):"
  EDGE_MONITOR_TFLITE=tflite_runtime "$HOSTPY" bench/memory_floor.py --emulated \
    --python-cmd "$RUN/enter /opt/venv-tflite/bin/python" 2>&1 | grep -v '^INFO' || fail "emulated memory floor (tflite)"
fi
if command -v pulseaudio >/dev/null; then
  step "daemon, 1 monitor, live from a PulseAudio null sink: native vs emulated (bench/daemon.py)"
  BUNDLE_IN=$("$RUN/enter" $VENV/bin/python -c 'from edge_monitor import DEMO_DIR; print(DEMO_DIR / "fan-id_00")')
  OMP_NUM_THREADS=1 "$HOSTPY" bench/daemon.py --monitors 1 --latency-runs 0 --seconds 20 2>&1 | grep -v '^INFO' \
    | sed 's/^/native:   /' || fail "native daemon benchmark"
  OMP_NUM_THREADS=1 "$HOSTPY" bench/daemon.py --monitors 1 --latency-runs 0 --seconds 20 --start-timeout 180 \
    --emulated --python-cmd "$RUN/enter $VENV/bin/python" --bundle "$BUNDLE_IN" 2>&1 | grep -v '^INFO' \
    | sed 's/^/emulated: /' || fail "emulated daemon benchmark"
  if [ "${ARM64_TFLITE:-1}" = 1 ]; then
    OMP_NUM_THREADS=1 EDGE_MONITOR_TFLITE=tflite_runtime "$HOSTPY" bench/daemon.py --monitors 1 --latency-runs 0 \
      --seconds 20 --start-timeout 180 --emulated --python-cmd "$RUN/enter /opt/venv-tflite/bin/python" \
      --bundle "$BUNDLE_IN" 2>&1 | grep -v '^INFO' | sed 's/^/emulated, tflite-runtime: /' \
      || fail "emulated daemon benchmark (tflite-runtime)"
  fi
else
  echo "note: no pulseaudio on this host: the daemon benchmarks are not run"
fi

step "done"
echo
echo "arm64 stage: time by step"
printf '%s\n' "${TIMES[@]}"
echo "$(printf '%5ds' $(( $(date +%s) - T0 )))  in all"
echo "disk: rootfs $(du -sxh "$ROOTFS" | cut -f1) (of it venvs $(du -shc "$ROOTFS"/opt/edge-monitor/venv "$ROOTFS"/opt/venv-tflite 2>/dev/null | tail -1 | cut -f1)), cache $(du -sxh "$CACHE" | cut -f1)"
if [ "$FAIL" = 0 ]; then echo "arm64 stage: passed"; else echo "arm64 stage: FAILED (see above)"; fi
exit $FAIL
}
main "$@"
