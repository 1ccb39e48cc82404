#!/usr/bin/env bash
# Roll out a new model bundle on a node, with automatic rollback. See deploy/README.md.
#
#   sudo deploy/rollout.sh [options] BUNDLE_DIR     roll out BUNDLE_DIR as models/<name>
#   sudo deploy/rollout.sh [options] --rollback NAME
#                                                   swap models/NAME.prev back in (and reload)
#
#   1. copy BUNDLE_DIR to /var/lib/edge-monitor/models/<name>.new
#   2. `edge-monitor check` a temporary copy of config.yaml (written beside it, so relative paths
#      still resolve) in which every monitor using models/<name> uses models/<name>.new instead;
#      a rejected bundle is removed and nothing else changes
#   3. swap models/<name> and models/<name>.new in one atomic rename (renameat2 RENAME_EXCHANGE);
#      the previous bundle is kept as models/<name>.prev
#   4. `edge-monitor check` the live config; `systemctl reload edge-monitor`; wait; the service
#      must still be active with the same main PID and no restart, and its journal since the
#      reload must not report the reload as rejected/failed
#   5. on any failure in 4: swap the previous bundle back, reload again, keep the rejected one as
#      models/<name>.failed, exit 1
#
#   --name NAME            bundle name under models/ (default: the basename of BUNDLE_DIR)
#   --config PATH          live config (default /etc/edge-monitor/config.yaml)
#   --models DIR           model directory (default /var/lib/edge-monitor/models)
#   --edge-monitor PATH    the edge-monitor command (default /opt/edge-monitor/venv/bin/edge-monitor)
#   --service NAME         systemd unit (default edge-monitor)
#   --wait SECONDS         how long to watch the service after the reload (default 10)
#   --no-reload            do not touch systemd (check, swap and rollback only)
#   --root DIR             operate on DIR as the file system root (implies --no-reload): default
#                          paths are prefixed with DIR, and absolute model paths in the config
#                          (/var/lib/edge-monitor/models/...) are read as DIR/var/lib/...
#
# Exit status: 0 rolled out, 1 rejected or rolled back, 2 bad arguments.
set -Eeuo pipefail

PROG=rollout.sh
die() { echo "$PROG: error: $*" >&2; exit 1; }
usage_error() { echo "$PROG: error: $* (see the comment at the top of $0)" >&2; exit 2; }
say() { echo "$PROG: $*"; }

ROOT=""
NAME=""
CONFIG=""
MODELS=""
EM=""
SERVICE=edge-monitor
WAIT=10
RELOAD=1
ROLLBACK=""
BUNDLE=""

while [ $# -gt 0 ]; do
  case "$1" in
    --name) [ $# -ge 2 ] || usage_error "--name needs a value"; NAME=$2; shift 2 ;;
    --config) [ $# -ge 2 ] || usage_error "--config needs a path"; CONFIG=$2; shift 2 ;;
    --models) [ $# -ge 2 ] || usage_error "--models needs a directory"; MODELS=$2; shift 2 ;;
    --edge-monitor) [ $# -ge 2 ] || usage_error "--edge-monitor needs a path"; EM=$2; shift 2 ;;
    --service) [ $# -ge 2 ] || usage_error "--service needs a name"; SERVICE=$2; shift 2 ;;
    --wait) [ $# -ge 2 ] || usage_error "--wait needs seconds"; WAIT=$2; shift 2 ;;
    --root) [ $# -ge 2 ] || usage_error "--root needs a directory"; ROOT=$2; shift 2 ;;
    --no-reload) RELOAD=0; shift ;;
    --rollback) [ $# -ge 2 ] || usage_error "--rollback needs a bundle name"; ROLLBACK=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) usage_error "unknown option: $1" ;;
    *) [ -z "$BUNDLE" ] || usage_error "one bundle at a time (got $BUNDLE and $1)"; BUNDLE=$1; shift ;;
  esac
done

case "$WAIT" in ''|*[!0-9]*) usage_error "--wait takes whole seconds, not $WAIT" ;; esac
if [ -n "$ROLLBACK" ]; then
  [ -z "$BUNDLE" ] || usage_error "--rollback takes no bundle directory"
  NAME=$ROLLBACK
else
  [ -n "$BUNDLE" ] || usage_error "no bundle directory given"
  BUNDLE=${BUNDLE%/}
  [ -f "$BUNDLE/model.json" ] && [ -f "$BUNDLE/model.tflite" ] \
    || die "$BUNDLE: not a model bundle (model.json and model.tflite expected)"
  BUNDLE=$(cd "$BUNDLE" && pwd)
  [ -n "$NAME" ] || NAME=$(basename "$BUNDLE")
fi
case "$NAME" in
  ''|.*|*/*|*.new|*.prev|*.failed) usage_error "bad bundle name: '$NAME'" ;;
esac
if [ -n "$ROOT" ]; then
  [ -d "$ROOT" ] || die "--root $ROOT: no such directory"
  ROOT=$(cd "$ROOT" && pwd)
  [ "$ROOT" != / ] || ROOT=""
  RELOAD=0
elif [ "$(id -u)" -ne 0 ]; then
  die "must run as root (sudo $0 ...), or with --root DIR"
fi
CONFIG=${CONFIG:-$ROOT/etc/edge-monitor/config.yaml}
EM=${EM:-$ROOT/opt/edge-monitor/venv/bin/edge-monitor}
MODELS=${MODELS:-$ROOT/var/lib/edge-monitor/models}
[ -f "$CONFIG" ] || die "config $CONFIG not found"
CONFIG=$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")
[ -x "$EM" ] || die "edge-monitor command $EM not found (install with deploy/install.sh, or pass --edge-monitor)"
[ -d "$MODELS" ] || die "model directory $MODELS not found (install with deploy/install.sh first)"
MODELS=$(cd "$MODELS" && pwd)
# the Python beside edge-monitor (its venv: has PyYAML) rewrites the config and swaps directories
PY="$(dirname "$EM")/python"
[ -x "$PY" ] || PY=python3
if [ "$RELOAD" -eq 1 ]; then
  command -v systemctl >/dev/null 2>&1 || die "systemctl not found (use --no-reload to skip the reload)"
fi

LIVE="$MODELS/$NAME"
NEW="$LIVE.new"
PREV="$LIVE.prev"
FAILED="$LIVE.failed"

TMPCONF=""
cleanup() { if [ -n "$TMPCONF" ]; then rm -f "$TMPCONF"; fi; }
trap cleanup EXIT
trap 'echo "$PROG: error: unexpected failure at line $LINENO" >&2' ERR

# one rollout at a time on this node
exec 9>"$MODELS/.rollout.lock"
flock -n 9 || die "another rollout is running (lock $MODELS/.rollout.lock)"

helper() {  # helper rewrite|swap ARGS...: the parts that need Python
  "$PY" - "$@" <<'EOF'
import ctypes, ctypes.util, errno, os, sys

def rewrite(config, out, root, live, replacement):
    """Copy config to out; every monitor whose model resolves to live uses replacement instead.
    With root, absolute model paths are read inside root; relative ones resolve against the
    config's directory (out is written beside it)."""
    import yaml
    with open(config, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    monitors = data.get("monitors") if isinstance(data, dict) else None
    if not isinstance(monitors, list):
        sys.exit(f"{config}: no monitors list")
    base = os.path.dirname(config)
    hits = 0
    for monitor in monitors:
        if not isinstance(monitor, dict) or not isinstance(monitor.get("model"), str):
            continue
        path = monitor["model"]
        if not os.path.isabs(path):
            path = os.path.join(base, path)
        elif root and not path.startswith(root + "/"):
            path = root + path
        path = os.path.normpath(path)
        if os.path.realpath(path) == os.path.realpath(live):
            path = replacement
            hits += 1
        monitor["model"] = path
    if hits == 0:
        sys.exit(f"no monitor in {config} uses the bundle {live}")
    with open(out, "w", encoding="utf-8") as f:
        yaml.safe_dump(data, f, sort_keys=False)

def swap(a, b):
    """Exchange two directories in one step (renameat2 RENAME_EXCHANGE); else two renames."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    fn = getattr(libc, "renameat2", None)
    if fn is not None:
        if fn(AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), RENAME_EXCHANGE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            sys.exit(f"renameat2 {a} <-> {b}: {os.strerror(err)}")
    tmp = a + ".swap"
    os.rename(a, tmp)
    os.rename(b, a)
    os.rename(tmp, b)
    print("note: this file system cannot exchange atomically; swapped with three renames")

cmd, *args = sys.argv[1:]
{"rewrite": rewrite, "swap": swap}[cmd](*args)
EOF
}

# check_config REPLACEMENT: `edge-monitor check` a copy of the config whose monitors of this bundle
# use REPLACEMENT; on failure CHECK_ERROR holds the last line of the output
CHECK_ERROR=""
check_config() {
  local out rc=0
  CHECK_ERROR=""
  TMPCONF=$(mktemp "$(dirname "$CONFIG")/.config.rollout-XXXXXX.yaml")
  if ! out=$(helper rewrite "$CONFIG" "$TMPCONF" "$ROOT" "$LIVE" "$1" 2>&1); then
    rc=1
  elif ! out=$("$EM" check "$TMPCONF" 2>&1); then
    rc=1
  fi
  rm -f "$TMPCONF"
  TMPCONF=""
  if [ "$rc" -ne 0 ]; then CHECK_ERROR=$(printf '%s\n' "$out" | tail -n 1); fi
  return "$rc"
}

RELOAD_ERROR=""
# reload the service and watch it; sets RELOAD_ERROR on failure
reload_and_watch() {
  RELOAD_ERROR=""
  [ "$RELOAD" -eq 1 ] || return 0
  if ! systemctl is-active --quiet "$SERVICE"; then
    say "$SERVICE is not running: the bundle is used at its next start"
    return 0
  fi
  local pid restarts since bad
  pid=$(systemctl show -p MainPID --value "$SERVICE")
  restarts=$(systemctl show -p NRestarts --value "$SERVICE")
  since=$(date +%s)
  if ! systemctl reload "$SERVICE"; then RELOAD_ERROR="systemctl reload $SERVICE failed"; return 0; fi
  say "reloaded $SERVICE; watching it for ${WAIT}s"
  sleep "$WAIT"
  if ! systemctl is-active --quiet "$SERVICE"; then
    RELOAD_ERROR="$SERVICE is $(systemctl is-active "$SERVICE" || true) after the reload"
  elif [ "$(systemctl show -p MainPID --value "$SERVICE")" != "$pid" ] \
    || [ "$(systemctl show -p NRestarts --value "$SERVICE")" != "$restarts" ]; then
    RELOAD_ERROR="$SERVICE restarted after the reload (see journalctl -u $SERVICE)"
  else
    bad=$(journalctl -u "$SERVICE" --since "@$since" -o cat --no-pager 2>/dev/null \
      | grep -i 'reload' | grep -Ei 'reject|fail|error' | tail -n 1 || true)
    if [ -n "$bad" ]; then RELOAD_ERROR="the daemon did not accept the reload: $bad"; fi
  fi
}

fix_owner() {  # a bundle takes the owner of the models directory; dirs 0750, files 0640
  chmod -R u=rwX,g=rX,o= "$1"
  chown -R "$(stat -c %u:%g "$MODELS")" "$1"
}

# ---------------------------------------------------------------------------------------------
if [ -n "$ROLLBACK" ]; then
  [ -d "$PREV" ] || die "no previous bundle $PREV to roll back to"
  [ -d "$LIVE" ] || die "no live bundle $LIVE"
  helper swap "$LIVE" "$PREV"
  say "swapped $PREV back in as $LIVE (the replaced bundle is now $PREV)"
  if check_config "$LIVE"; then
    say "edge-monitor check: live config ok"
  else
    say "warning: edge-monitor check of the live config: $CHECK_ERROR"
  fi
  reload_and_watch
  [ -z "$RELOAD_ERROR" ] || die "$RELOAD_ERROR"
  say "rolled back $NAME"
  exit 0
fi

# 1. copy
rm -rf "$NEW"
cp -R "$BUNDLE" "$NEW"
fix_owner "$NEW"
say "copied $BUNDLE to $NEW"

# 2. check the config with the new bundle
if ! check_config "$NEW"; then
  rm -rf "$NEW"
  die "rejected, nothing changed: $CHECK_ERROR"
fi
say "edge-monitor check: config with $NEW ok"

# 3. swap
SWAPPED=0
if [ -d "$LIVE" ]; then
  helper swap "$LIVE" "$NEW"
  SWAPPED=1
  rm -rf "$PREV"
  mv "$NEW" "$PREV"
  say "swapped $NEW in as $LIVE (previous kept as $PREV)"
else
  mv "$NEW" "$LIVE"
  say "installed $LIVE (there was no previous bundle)"
fi

# 4. verify the live state
FAIL=""
if ! check_config "$LIVE"; then
  FAIL="edge-monitor check of the live config: $CHECK_ERROR"
else
  reload_and_watch
  FAIL=$RELOAD_ERROR
fi
if [ -z "$FAIL" ]; then
  say "rolled out $NAME"
  exit 0
fi

# 5. roll back
rm -rf "$FAILED"
if [ "$SWAPPED" -eq 1 ]; then
  helper swap "$LIVE" "$PREV"
  mv "$PREV" "$FAILED"
  say "rolled back to the previous bundle; the rejected one is kept as $FAILED"
else
  mv "$LIVE" "$FAILED"
  say "removed the new bundle (no previous one); it is kept as $FAILED"
fi
reload_and_watch
[ -z "$RELOAD_ERROR" ] || say "warning: after the rollback: $RELOAD_ERROR"
die "rolled back: $FAIL"
