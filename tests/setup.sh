#!/usr/bin/env bash
# The system packages the tests need: each is probed, and the missing ones are installed with apt-get
# when this runs as root (or with password-less sudo). Otherwise ONE line on stderr names the exact
# command to run, and the exit code is 2: a run that skipped the MQTT, microphone and daemon suites
# would pass without having proved them.
#
#   bash tests/setup.sh           probe, install what is missing (tests/run.sh calls this first)
#   bash tests/setup.sh --check   probe only: exit 0 when all are present, else the one line and 2
#   bash tests/setup.sh --list    the table below: package and probe, one a line
#
# Environment: PYTHON (default python3) is the interpreter the venvs are made with; SETUP_EXTRA_PATH
# (default /usr/local/sbin:/usr/sbin:/sbin) is where command probes look beyond PATH, because Debian
# puts mosquitto and debootstrap in /usr/sbin, which is not on every user's PATH (tests/test_setup.py
# empties it to hide a package).
set -uo pipefail

# The one list. probe kinds: command:NAME (on PATH), file:GLOB (exists), library:SONAME (ldconfig's
# cache), python-module:NAME (importable by $PYTHON; Debian ships ensurepip in python3-venv).
PACKAGES=(
  "python3-venv        python-module:ensurepip"                                    # venvs with pip
  "mosquitto           command:mosquitto"                                          # MQTT tests: a broker on loopback
  "openssl             command:openssl"                                            # certificates for the TLS tests
  "pulseaudio          command:pulseaudio"                                         # microphone/daemon tests: a null sink
  "pulseaudio-utils    command:paplay"                                             # pactl, paplay
  "libasound2-plugins  file:/usr/lib/*/alsa-lib/libasound_module_pcm_pulse.so"     # ALSA → PulseAudio for PortAudio
  "libportaudio2       library:libportaudio.so.2"                                  # sounddevice
  "systemd             command:systemd-analyze"                                    # systemd-analyze verify of the unit
  "sox                 command:sox"                                                # test sounds
  "chromium            command:chromium"                                           # web page tests
  "qemu-user-static    command:qemu-aarch64-static"                                # the arm64 run (tests/arm64.sh)
  "debootstrap         command:debootstrap"                                        # its arm64 root file system
  "nodejs              command:node"                                               # Node-RED flow tests
  "npm                 command:npm"                                                # Node-RED itself
)

PYTHON=${PYTHON:-python3}
SETUP_EXTRA_PATH=${SETUP_EXTRA_PATH-/usr/local/sbin:/usr/sbin:/sbin}
PROBE_PATH=$PATH${SETUP_EXTRA_PATH:+:$SETUP_EXTRA_PATH}

say() { echo "setup: $*"; }
fail() { echo "setup: $*" >&2; exit 2; }

# probe KIND:ARG → 0 when present
probe() {
  local kind=${1%%:*} arg=${1#*:}
  case $kind in
    command) PATH=$PROBE_PATH command -v "$arg" >/dev/null 2>&1 ;;
    file) compgen -G "$arg" >/dev/null ;;
    library)
      local cache
      cache=$(PATH=$PROBE_PATH ldconfig -p 2>/dev/null) || return 1
      [[ $cache == *"$arg "* ]] ;;
    python-module) "$PYTHON" -c "import $arg" >/dev/null 2>&1 ;;
    *) echo "setup: bug: unknown probe kind '$kind' in tests/setup.sh" >&2; exit 70 ;;
  esac
}

# missing_packages → sets MISSING (package names) and MISSING_PROBES ("package (probe)")
missing_packages() {
  MISSING=() MISSING_PROBES=()
  local row package probe_spec
  for row in "${PACKAGES[@]}"; do
    read -r package probe_spec <<<"$row"
    if ! probe "$probe_spec"; then
      MISSING+=("$package")
      MISSING_PROBES+=("$package (${probe_spec/:/ })")
    fi
  done
}

mode=${1:-install}
case $mode in
  --list) for row in "${PACKAGES[@]}"; do read -r package probe_spec <<<"$row"; echo "$package $probe_spec"; done; exit 0 ;;
  --check|install) ;;
  *) fail "unknown argument '$mode' (expected --check or --list, or nothing to install what is missing)" ;;
esac

missing_packages
if [ ${#MISSING[@]} -eq 0 ]; then
  say "all ${#PACKAGES[@]} system packages the tests need are present"
  exit 0
fi

command_line="sudo apt-get update && sudo apt-get install -y ${MISSING[*]}"
if [ "$mode" = --check ]; then
  fail "missing system packages: ${MISSING[*]}; install them with: $command_line"
fi
if ! PATH=$PROBE_PATH command -v apt-get >/dev/null 2>&1; then
  fail "missing system packages: ${MISSING[*]}; there is no apt-get here: install their equivalents with your package manager (the probes are in tests/setup.sh)"
fi
as=()
if [ "$(id -u)" != 0 ]; then
  if PATH=$PROBE_PATH command -v sudo >/dev/null 2>&1 && PATH=$PROBE_PATH sudo -n true >/dev/null 2>&1; then
    as=(sudo -n)
  else
    fail "missing system packages: ${MISSING[*]}; not root, so install them yourself with: $command_line"
  fi
fi

say "installing ${MISSING[*]} (apt-get${as:+ via sudo})"
# apt's and dpkg's chatter goes to a log, shown only when they fail; env, not export: sudo resets the environment
apt=(env DEBIAN_FRONTEND=noninteractive apt-get)
log=$(mktemp "${TMPDIR:-/tmp}/edge-monitor-setup.XXXXXX.log")
if ! PATH=$PROBE_PATH "${as[@]}" "${apt[@]}" update -qq >>"$log" 2>&1; then
  tail -n 20 "$log" >&2
  fail "apt-get update failed (above; whole log: $log)"
fi
if ! PATH=$PROBE_PATH "${as[@]}" "${apt[@]}" install -y -qq "${MISSING[@]}" >>"$log" 2>&1; then
  tail -n 20 "$log" >&2
  fail "apt-get install -y ${MISSING[*]} failed (above; whole log: $log)"
fi
rm -f "$log"

missing_packages
if [ ${#MISSING[@]} -gt 0 ]; then
  fail "apt-get install finished, but its probe still fails for: ${MISSING_PROBES[*]}"
fi
say "installed; all ${#PACKAGES[@]} system packages the tests need are present"
