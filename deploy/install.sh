#!/usr/bin/env bash
# Install edge-monitor on a Debian-based sensor node (Raspberry Pi OS Bookworm, Jetson Ubuntu).
# Idempotent: a second run changes nothing and says "unchanged". See deploy/README.md.
#
#   sudo deploy/install.sh [options]
#
#   --wheel PATH           install this wheel (default: the one edge_monitor-*.whl in dist/ beside
#                          deploy/, as in a node bundle of deploy/ systemd/ dist/ built once; else
#                          build one from the repository this script lives in, with `pip wheel --no-deps`)
#   --config FILE          install FILE as /etc/edge-monitor/config.yaml if there is none yet
#                          (default: deploy/config.template.yaml). An existing config is NEVER replaced.
#   --model DIR            copy a model bundle to /var/lib/edge-monitor/models/<basename of DIR>/
#                          (repeatable). Without --model, and with no bundle installed yet, the demo
#                          bundle shipped in the package is installed as models/fan-id_00.
#   --mqtt-password-file FILE
#                          install FILE as /etc/edge-monitor/mqtt-password (root:edge-monitor 0640)
#   --pip-args "ARGS"      extra arguments for `pip wheel` and `pip install` (e.g. "--no-index
#                          --find-links /media/usb/wheels" on a node without internet)
#   --python PATH          interpreter for the virtual environment (default python3; >= 3.10)
#   --no-apt               do not install system packages (python3-venv, libportaudio2)
#   --no-enable            do not enable the unit
#   --root DIR             (alias --prefix) install into DIR as the file system root (an OS image, or a scratch
#                          directory in CI): every path is prefixed with DIR; no apt; the user is
#                          created with `useradd --root DIR` when DIR/etc/passwd exists (else skipped,
#                          files then keep the invoking user as owner); the unit is enabled with
#                          `systemctl --root DIR enable`. The venv under DIR only works at that path.
#
# Exit status: 0 done, 1 a step failed, 2 bad arguments. Errors end in one line on stderr.
set -Eeuo pipefail

PROG=install.sh
HERE=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)
REPO=$(dirname "$HERE")
SERVICE_USER=edge-monitor
APT_PACKAGES="python3 python3-venv libportaudio2"
DEMO_NAME=fan-id_00

die() { echo "$PROG: error: $*" >&2; exit 1; }
usage_error() { echo "$PROG: error: $* (see the comment at the top of $0)" >&2; exit 2; }
# one line per step: what happened, and to what
say() { printf '%-10s %s\n' "$1" "$2"; }
abspath() { (cd "$(dirname "$1")" && printf '%s/%s\n' "$(pwd)" "$(basename "$1")"); }

ROOT=""
APT=1
ENABLE=1
WHEEL=""
CONFIG_SRC=""
PASSWORD_SRC=""
PIP_ARGS=""
PYTHON=python3
MODEL_SRCS=()

while [ $# -gt 0 ]; do
  case "$1" in
    --root) [ $# -ge 2 ] || usage_error "--root needs a directory"; ROOT=$2; shift 2 ;;
    --prefix) [ $# -ge 2 ] || usage_error "--prefix needs a directory"; ROOT=$2; shift 2 ;;
    --wheel) [ $# -ge 2 ] || usage_error "--wheel needs a path"; WHEEL=$2; shift 2 ;;
    --config) [ $# -ge 2 ] || usage_error "--config needs a file"; CONFIG_SRC=$2; shift 2 ;;
    --model) [ $# -ge 2 ] || usage_error "--model needs a directory"; MODEL_SRCS+=("$2"); shift 2 ;;
    --mqtt-password-file) [ $# -ge 2 ] || usage_error "--mqtt-password-file needs a file"; PASSWORD_SRC=$2; shift 2 ;;
    --pip-args) [ $# -ge 2 ] || usage_error "--pip-args needs a string"; PIP_ARGS=$2; shift 2 ;;
    --python) [ $# -ge 2 ] || usage_error "--python needs a path"; PYTHON=$2; shift 2 ;;
    --no-apt) APT=0; shift ;;
    --no-enable) ENABLE=0; shift ;;
    -h|--help) sed -n '2,/^set -/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) usage_error "unknown argument: $1" ;;
  esac
done

# --- arguments → absolute paths, checked before anything is changed -------------------------
if [ -z "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then
  die "must run as root (sudo $0 ...), or with --root DIR"
fi
if [ -n "$ROOT" ]; then
  mkdir -p "$ROOT" || die "cannot create --root $ROOT"
  ROOT=$(cd "$ROOT" && pwd)
  [ "$ROOT" != / ] || ROOT=""
fi
if [ -z "$WHEEL" ] && [ -d "$REPO/dist" ]; then
  found=("$REPO"/dist/edge_monitor-*.whl)
  if [ ${#found[@]} -gt 1 ]; then
    die "${#found[@]} wheels in $REPO/dist/: pass the one to install with --wheel"
  elif [ -f "${found[0]}" ]; then
    WHEEL=${found[0]}
  fi
fi
if [ -n "$WHEEL" ]; then
  [ -f "$WHEEL" ] || die "--wheel $WHEEL: no such file"
  case "$WHEEL" in *.whl) ;; *) die "--wheel $WHEEL: not a .whl file" ;; esac
  WHEEL=$(abspath "$WHEEL")
elif [ ! -f "$REPO/pyproject.toml" ]; then
  die "no --wheel given and no pyproject.toml in $REPO to build one from"
fi
if [ -n "$CONFIG_SRC" ]; then
  [ -f "$CONFIG_SRC" ] || die "--config $CONFIG_SRC: no such file"
  CONFIG_SRC=$(abspath "$CONFIG_SRC")
fi
if [ -n "$PASSWORD_SRC" ]; then
  [ -f "$PASSWORD_SRC" ] || die "--mqtt-password-file $PASSWORD_SRC: no such file"
  PASSWORD_SRC=$(abspath "$PASSWORD_SRC")
fi
for i in "${!MODEL_SRCS[@]}"; do
  m=${MODEL_SRCS[$i]%/}
  [ -f "$m/model.json" ] && [ -f "$m/model.tflite" ] \
    || die "--model $m: not a model bundle (model.json and model.tflite expected)"
  MODEL_SRCS[$i]=$(abspath "$m")
done
UNIT_SRC="$REPO/systemd/edge-monitor.service"
[ -f "$UNIT_SRC" ] || die "unit file $UNIT_SRC is missing"

OPT="$ROOT/opt/edge-monitor"
VENV="$OPT/venv"
ETC="$ROOT/etc/edge-monitor"
STATE="$ROOT/var/lib/edge-monitor"
MODELS="$STATE/models"
UNIT_DST="$ROOT/etc/systemd/system/edge-monitor.service"

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
STEP="start"
trap 'echo "$PROG: error: $STEP failed" >&2' ERR
CHANGED=0

# run a command quietly; on failure show the end of its output and stop with one line
quiet() {
  local what=$1; shift
  if ! "$@" >"$TMP/log" 2>&1; then
    tail -n 15 "$TMP/log" >&2
    trap - ERR
    die "$what failed"
  fi
}

# --- 1. system packages -----------------------------------------------------------------------
STEP="apt"
if [ -n "$ROOT" ]; then
  say skipped "apt packages ($APT_PACKAGES): --root"
elif [ "$APT" -eq 0 ]; then
  say skipped "apt packages ($APT_PACKAGES): --no-apt"
else
  missing=""
  for p in $APT_PACKAGES; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || missing="$missing $p"
  done
  if [ -n "$missing" ]; then
    quiet "apt-get update" apt-get update -qq
    quiet "apt-get install$missing" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends $missing
    say installed "apt packages:$missing"
    CHANGED=1
  else
    say unchanged "apt packages: $APT_PACKAGES"
  fi
fi

# --- 2. Python --------------------------------------------------------------------------------
STEP="python check"
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (install python3 >= 3.10, or drop --no-apt)"
PYVER=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) \
  || die "$PYTHON does not run"
case "$PYVER" in
  3.[0-9]) die "Python >= 3.10 needed, $PYTHON is $PYVER" ;;
  3.*) ;;
  *) die "Python >= 3.10 needed, $PYTHON is $PYVER" ;;
esac
"$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1 \
  || die "$PYTHON has no venv/ensurepip module (apt-get install python3-venv, or drop --no-apt)"

# --- 3. service user --------------------------------------------------------------------------
STEP="service user"
OWNER=""   # uid:gid of the service user, when it exists
if [ -n "$ROOT" ]; then
  ROOT_ARGS=(--root "$ROOT")
  passwd_line() { grep "^$1:" "$ROOT/etc/passwd" 2>/dev/null; }
  group_line() { grep "^$1:" "$ROOT/etc/group" 2>/dev/null; }
else
  ROOT_ARGS=()
  passwd_line() { getent passwd "$1"; }
  group_line() { getent group "$1"; }
fi
in_audio_group() {  # is the service user a member of group audio?
  case ",$(group_line audio | cut -d: -f4)," in *",$SERVICE_USER,"*) return 0 ;; esac
  return 1
}
if [ -n "$ROOT" ] && [ ! -f "$ROOT/etc/passwd" ]; then
  say skipped "user $SERVICE_USER: $ROOT/etc/passwd absent (files stay owned by $(id -un))"
else
  if ! group_line audio >/dev/null; then
    quiet "groupadd audio" groupadd "${ROOT_ARGS[@]}" --system audio
    say created "group audio"
    CHANGED=1
  fi
  if ! passwd_line "$SERVICE_USER" >/dev/null; then
    quiet "useradd $SERVICE_USER" useradd "${ROOT_ARGS[@]}" --system --user-group \
      --home-dir /var/lib/edge-monitor --no-create-home --shell /usr/sbin/nologin \
      --groups audio --comment "edge-monitor daemon" "$SERVICE_USER"
    say created "user $SERVICE_USER (groups: $SERVICE_USER, audio)"
    CHANGED=1
  elif ! in_audio_group; then
    quiet "usermod $SERVICE_USER" usermod "${ROOT_ARGS[@]}" -a -G audio "$SERVICE_USER"
    say updated "user $SERVICE_USER: added to group audio"
    CHANGED=1
  else
    say unchanged "user $SERVICE_USER (in group audio)"
  fi
  OWNER=$(passwd_line "$SERVICE_USER" | cut -d: -f3,4)
fi
SVC_GID=${OWNER#*:}

# own PATH by the service user (when it exists) with mode MODE
own() {  # own MODE PATH
  chmod "$1" "$2"
  if [ -n "$OWNER" ]; then chown "$OWNER" "$2"; fi
}
# root-owned, group of the service user (when it exists)
own_root_group() {  # own_root_group MODE PATH
  chmod "$1" "$2"
  if [ -n "$OWNER" ]; then chown "0:$SVC_GID" "$2"; fi
}
# a bundle tree: owned by the service user, dirs 0750, files 0640
own_tree() {
  chmod -R u=rwX,g=rX,o= "$1"
  if [ -n "$OWNER" ]; then chown -R "$OWNER" "$1"; fi
}

# --- 4. directories ---------------------------------------------------------------------------
STEP="directories"
for d in "$OPT" "$ETC" "$STATE" "$MODELS"; do
  if [ -d "$d" ]; then say unchanged "$d/"; else mkdir -p "$d"; say created "$d/"; CHANGED=1; fi
done
chmod 0755 "$OPT" "$ETC"
own 0750 "$STATE"
own 0750 "$MODELS"

# --- 5. virtual environment -------------------------------------------------------------------
STEP="virtual environment"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
  say unchanged "$VENV"
else
  if [ -e "$VENV" ]; then rm -rf "$VENV"; fi   # broken (e.g. the system Python was replaced)
  quiet "python -m venv $VENV" "$PYTHON" -m venv "$VENV"
  say created "$VENV (Python $PYVER)"
  CHANGED=1
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
# shellcheck disable=SC2206  # word splitting of --pip-args is intended
EXTRA=($PIP_ARGS)

# --- 6. the edge-monitor wheel ----------------------------------------------------------------
STEP="wheel"
if [ -z "$WHEEL" ]; then
  # build from a copy, so the repository is left exactly as it was
  mkdir -p "$TMP/src" "$TMP/wheels"
  tar -C "$REPO" --exclude=./.git --exclude='./.venv*' --exclude=./build --exclude=./dist \
    --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache --exclude=.ruff_cache \
    --exclude=./models --exclude=./data -cf - . | tar -C "$TMP/src" -xf -
  quiet "pip wheel (building edge-monitor from $REPO)" \
    "${PIP[@]}" wheel --no-deps ${EXTRA[@]+"${EXTRA[@]}"} -w "$TMP/wheels" "$TMP/src"
  WHEEL=$(ls "$TMP/wheels"/edge_monitor-*.whl)
fi
# identity of the wheel's content (its RECORD lists the sha256 of every file; zip timestamps vary)
WHEEL_ID="$(basename "$WHEEL") $("$VENV/bin/python" - "$WHEEL" <<'EOF'
import hashlib, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    record = [n for n in z.namelist() if n.endswith(".dist-info/RECORD")]
    if len(record) != 1:
        sys.exit("no RECORD in wheel")
    print(hashlib.sha256(z.read(record[0])).hexdigest())
EOF
)"
STAMP="$OPT/installed-wheel"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WHEEL_ID" ] && [ -x "$VENV/bin/edge-monitor" ]; then
  say unchanged "edge-monitor ($(basename "$WHEEL"))"
else
  # first the dependencies (and the package when its version changed), then this exact content
  quiet "pip install $(basename "$WHEEL")" "${PIP[@]}" install --quiet ${EXTRA[@]+"${EXTRA[@]}"} "$WHEEL"
  quiet "pip install --force-reinstall $(basename "$WHEEL")" \
    "${PIP[@]}" install --quiet --no-deps --force-reinstall ${EXTRA[@]+"${EXTRA[@]}"} "$WHEEL"
  [ -x "$VENV/bin/edge-monitor" ] || die "the wheel did not install $VENV/bin/edge-monitor"
  printf '%s\n' "$WHEEL_ID" >"$STAMP"
  say installed "edge-monitor ($(basename "$WHEEL")) into $VENV"
  CHANGED=1
fi

# --- 7. model bundles -------------------------------------------------------------------------
STEP="models"
install_bundle() {  # install_bundle SRC NAME
  local dst="$MODELS/$2"
  if [ ! -d "$dst" ]; then
    rm -rf "$dst.tmp"
    cp -R "$1" "$dst.tmp"
    own_tree "$dst.tmp"
    mv "$dst.tmp" "$dst"
    say installed "model $dst/"
    CHANGED=1
  elif diff -rq "$1" "$dst" >/dev/null 2>&1; then
    own_tree "$dst"
    say unchanged "model $dst/"
  else
    say kept "model $dst/ (differs from $1: not replaced; roll it out with deploy/rollout.sh)"
  fi
}
TEMPLATE_MODEL=$DEMO_NAME
if [ ${#MODEL_SRCS[@]} -gt 0 ]; then
  for m in "${MODEL_SRCS[@]}"; do install_bundle "$m" "$(basename "$m")"; done
  TEMPLATE_MODEL=$(basename "${MODEL_SRCS[0]}")
elif ! ls "$MODELS"/*/model.json >/dev/null 2>&1; then
  # no bundle at all yet: the demo bundle from the installed package, so the template config runs
  DEMO=$("$VENV/bin/python" -c 'import importlib.util as u, os; print(os.path.join(u.find_spec("edge_monitor").submodule_search_locations[0], "demo", "'$DEMO_NAME'"))')
  [ -f "$DEMO/model.json" ] || die "demo bundle not found in the installed package ($DEMO)"
  install_bundle "$DEMO" "$DEMO_NAME"
else
  say unchanged "models: $(cd "$MODELS" && echo */)"
fi

# --- 8. configuration (never overwritten) -----------------------------------------------------
STEP="config"
CONFIG="$ETC/config.yaml"
if [ -f "$CONFIG" ]; then
  if [ -n "$CONFIG_SRC" ] && ! cmp -s "$CONFIG_SRC" "$CONFIG"; then
    say kept "$CONFIG (differs from --config $CONFIG_SRC; an existing config is never overwritten)"
  else
    say unchanged "$CONFIG"
  fi
else
  if [ -n "$CONFIG_SRC" ]; then
    cp "$CONFIG_SRC" "$CONFIG.tmp"
  else
    NODE=$(hostname 2>/dev/null || echo edge-node)
    sed -e "s/@NODE@/$NODE/g" -e "s/@MODEL@/$TEMPLATE_MODEL/g" "$HERE/config.template.yaml" >"$CONFIG.tmp"
  fi
  own_root_group 0640 "$CONFIG.tmp"
  mv "$CONFIG.tmp" "$CONFIG"
  say installed "$CONFIG (from ${CONFIG_SRC:-the template}; edit it, then: edge-monitor check)"
  CHANGED=1
fi
own_root_group 0640 "$CONFIG"

# --- 9. MQTT password file --------------------------------------------------------------------
STEP="mqtt password"
PASSWORD="$ETC/mqtt-password"
if [ -n "$PASSWORD_SRC" ]; then
  if [ -f "$PASSWORD" ] && cmp -s "$PASSWORD_SRC" "$PASSWORD"; then
    say unchanged "$PASSWORD"
  else
    what=installed; [ -f "$PASSWORD" ] && what=updated
    (umask 077 && cp "$PASSWORD_SRC" "$PASSWORD.tmp")
    own_root_group 0640 "$PASSWORD.tmp"
    mv "$PASSWORD.tmp" "$PASSWORD"
    say "$what" "$PASSWORD (root:$SERVICE_USER 0640)"
    CHANGED=1
  fi
elif [ -f "$PASSWORD" ]; then
  say unchanged "$PASSWORD"
else
  say absent "$PASSWORD (needed only when the broker wants a password; see deploy/README.md)"
fi
if [ -f "$PASSWORD" ]; then own_root_group 0640 "$PASSWORD"; fi

# --- 10. systemd unit -------------------------------------------------------------------------
STEP="systemd unit"
mkdir -p "$(dirname "$UNIT_DST")"
if [ -f "$UNIT_DST" ] && cmp -s "$UNIT_SRC" "$UNIT_DST"; then
  say unchanged "$UNIT_DST"
  UNIT_CHANGED=0
else
  what=installed; [ -f "$UNIT_DST" ] && what=updated
  cp "$UNIT_SRC" "$UNIT_DST.tmp"
  chmod 0644 "$UNIT_DST.tmp"
  mv "$UNIT_DST.tmp" "$UNIT_DST"
  say "$what" "$UNIT_DST"
  UNIT_CHANGED=1
  CHANGED=1
fi
SYSTEMD_UP=0
if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then SYSTEMD_UP=1; fi
if [ "$SYSTEMD_UP" -eq 1 ] && [ "$UNIT_CHANGED" -eq 1 ]; then
  quiet "systemctl daemon-reload" systemctl daemon-reload
fi
STEP="systemctl enable"
if [ "$ENABLE" -eq 0 ]; then
  say skipped "systemctl enable: --no-enable"
elif ! command -v systemctl >/dev/null 2>&1; then
  say skipped "systemctl enable: no systemctl"
elif [ -n "$ROOT" ]; then
  if systemctl --root="$ROOT" is-enabled --quiet edge-monitor.service 2>/dev/null; then
    say unchanged "edge-monitor.service enabled (in $ROOT)"
  else
    quiet "systemctl --root enable" systemctl --root="$ROOT" enable edge-monitor.service
    say enabled "edge-monitor.service (in $ROOT)"
    CHANGED=1
  fi
elif [ "$SYSTEMD_UP" -eq 0 ]; then
  say skipped "systemctl enable: systemd is not running (run: systemctl enable edge-monitor)"
elif systemctl is-enabled --quiet edge-monitor.service; then
  say unchanged "edge-monitor.service enabled"
else
  quiet "systemctl enable" systemctl enable edge-monitor.service
  say enabled "edge-monitor.service"
  CHANGED=1
fi

# --- 11. check what was installed (a warning only: the config may still need editing) ---------
STEP="final check"
if [ -z "$ROOT" ]; then
  if out=$("$VENV/bin/edge-monitor" check "$CONFIG" 2>&1); then
    say ok "edge-monitor check $CONFIG"
  else
    say warning "edge-monitor check $CONFIG: $(printf '%s\n' "$out" | tail -n 1)"
  fi
fi

if [ "$CHANGED" -eq 0 ]; then
  echo "edge-monitor: nothing to do, everything unchanged"
else
  echo "edge-monitor: installed. Next: edit $CONFIG, then"
  if [ "$SYSTEMD_UP" -eq 1 ] && systemctl is-active --quiet edge-monitor.service; then
    echo "  systemctl restart edge-monitor    # the running daemon still has the old version"
  else
    echo "  systemctl start edge-monitor"
  fi
  echo "  journalctl -u edge-monitor -f"
fi
