"""Deployment: the systemd unit, deploy/install.sh and deploy/rollout.sh, run for real in scratch roots.

systemd is not PID 1 on a CI machine, so:
- the unit is checked with the real ``systemd-analyze verify``; the only change to it is its ExecStart
  binary, pointed at a stub in a temporary folder because verify insists that the binary exists
  (every other line is the committed unit, byte for byte, and verify's warnings count as failures);
- install.sh runs with ``--root`` into a temporary folder: a real venv, the real wheel built from
  this checkout, real ``useradd --root`` (when the test runs as root), real ``systemctl --root enable``;
  the wheel is installed ``--no-deps --no-index`` (fast, offline), and the venv then borrows the
  test environment's dependencies through a ``.pth`` file so that the installed command really runs;
- rollout.sh runs against a scratch node (config + models) with the real ``edge-monitor check``;
  its reload-and-watch part is driven by a stand-in ``systemctl``/``journalctl`` on PATH — the one
  mock here, because there is no running systemd to reload — to test its rollback decisions.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "edge-monitor.service"
INSTALL = REPO / "deploy" / "install.sh"
ROLLOUT = REPO / "deploy" / "rollout.sh"
TEMPLATE = REPO / "deploy" / "config.template.yaml"
DEMO = REPO / "edge_monitor" / "demo" / "fan-id_00"
EXEC_START = "/opt/edge-monitor/venv/bin/edge-monitor run --config /etc/edge-monitor/config.yaml"
IS_ROOT = os.geteuid() == 0


def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("timeout", 300)
    return subprocess.run([str(c) for c in cmd], check=False, capture_output=True, text=True, **kw)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the unit -------------------------------------------------------------------------------------

def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd unit syntax: sections, repeated keys kept in order, comments and blank lines skipped."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"directive outside a section: {raw}"
        assert "=" in line, f"not a directive: {raw}"
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(section: dict[str, list[str]], key: str) -> str:
    assert key in section, f"{key}= missing"
    assert len(section[key]) == 1, f"{key}= given {len(section[key])} times"
    return section[key][0]


def test_unit_has_the_required_directives():
    unit = parse_unit(UNIT.read_text())
    u, s, i = unit["Unit"], unit["Service"], unit["Install"]
    assert int(one(u, "StartLimitIntervalSec")) > 0 and int(one(u, "StartLimitBurst")) > 0
    expected = {
        "Type": "notify", "NotifyAccess": "main", "Restart": "on-failure",
        "User": "edge-monitor", "SupplementaryGroups": "audio",
        "StateDirectory": "edge-monitor", "ConfigurationDirectory": "edge-monitor",
        "ExecStart": EXEC_START, "ExecReload": "/bin/kill -HUP $MAINPID",
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectControlGroups": "yes",
        "LockPersonality": "yes", "RestrictRealtime": "yes", "SystemCallArchitectures": "native",
        "PrivateDevices": "no", "DevicePolicy": "closed",
    }
    for key, value in expected.items():
        assert one(s, key) == value, f"{key}={one(s, key)}, expected {value}"
    for key in ("WatchdogSec", "RestartSec", "TimeoutStopSec"):
        assert one(s, key).rstrip("s").isdigit(), f"{key}={one(s, key)}"
    assert 0 < int(one(s, "WatchdogSec").rstrip("s")) <= 60
    assert set(one(s, "RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    assert "char-alsa rw" in s["DeviceAllow"]
    assert "PYTHONUNBUFFERED=1" in " ".join(s["Environment"]).split()
    # ProtectSystem=strict leaves only the StateDirectory writable; nothing else may be opened up
    assert "ReadWritePaths" not in s
    # deliberately off (cffi audio callback, XNNPACK): see the comment in the unit
    assert "MemoryDenyWriteExecute" not in s
    assert one(i, "WantedBy") == "multi-user.target"


def test_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    # verify refuses a unit whose ExecStart binary does not exist; point it at a stub, change nothing else
    stub = tmp_path / "bin" / "edge-monitor"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    original = UNIT.read_text().splitlines(keepends=True)
    copy = [line.replace("ExecStart=/opt/edge-monitor/venv/bin/edge-monitor ", f"ExecStart={stub} ", 1)
            for line in original]
    assert sum(a != b for a, b in zip(original, copy)) == 1, "exactly the ExecStart line is rewritten"
    unit = tmp_path / "edge-monitor.service"
    unit.write_text("".join(copy))

    def complaints(path: Path) -> tuple[int, list[str]]:
        r = run([analyze, "verify", "--man=no", path], cwd=tmp_path)
        lines = (r.stdout + r.stderr).splitlines()
        # verify exits 0 on warnings ("Unknown key ...", "Failed to parse ..., ignoring"): every line
        # about this unit is a failure; lines about the host's own units are not ours to judge
        return r.returncode, [ln for ln in lines if path.name in ln or str(path) in ln]

    rc, ours = complaints(unit)
    assert rc == 0 and not ours, "\n".join(ours)
    # the check above would see a warning: one bad directive in a copy is reported
    bad = tmp_path / "bad-edge-monitor.service"
    bad.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystem=strictly"))
    assert complaints(bad)[1], "a bad ProtectSystem= value must be reported"


# --- install.sh -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The edge-monitor wheel, built once from a copy of this checkout (the checkout stays untouched)."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache"))
    out = base / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", out, src]
    r = run([*cmd[:4], "--no-build-isolation", *cmd[4:]])   # offline, with this environment's setuptools
    if r.returncode != 0:
        r = run(cmd)                                         # else an isolated build (needs the index)
    assert r.returncode == 0, r.stderr[-3000:]
    (whl,) = out.glob("edge_monitor-*.whl")
    return whl


def make_os_root(root: Path) -> None:
    """The account files of a minimal OS image, so that install.sh can run `useradd --root`."""
    etc = root / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\naudio:x:29:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\naudio:*::\n")
    (etc / "shadow").chmod(0o640)
    (etc / "gshadow").chmod(0o640)


def install(root: Path, wheel: Path, *args) -> subprocess.CompletedProcess:
    return run(["bash", INSTALL, "--root", root, "--no-apt", "--python", sys.executable,
                "--wheel", wheel, "--pip-args", "--no-deps --no-index", *args])


def actions(stdout: str) -> dict[str, list[str]]:
    """install.sh prints one 'action  what' line per step."""
    out: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        word, _, rest = line.partition(" ")
        out.setdefault(word, []).append(rest.strip())
    return out


def borrow_test_dependencies(venv: Path) -> None:
    """The venv got the wheel with --no-deps; let it import this environment's numpy, scipy, ... ."""
    (site,) = venv.glob("lib/python3*/site-packages")
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "zz-test-borrowed-deps.pth").write_text("".join(f"{p}\n" for p in sorted(paths)))


def test_install_into_a_scratch_root_twice(tmp_path, wheel):
    root = tmp_path / "root"
    if IS_ROOT:
        make_os_root(root)
    password = tmp_path / "mqtt-password"
    password.write_text("s3cret\n")

    first = install(root, wheel, "--mqtt-password-file", password)
    assert first.returncode == 0, first.stdout + first.stderr
    done = actions(first.stdout)
    assert "unchanged" not in done, first.stdout

    venv = root / "opt/edge-monitor/venv"
    entry = venv / "bin/edge-monitor"
    assert entry.is_file() and os.access(entry, os.X_OK)
    etc, state = root / "etc/edge-monitor", root / "var/lib/edge-monitor"
    config = etc / "config.yaml"
    assert mode(config) == 0o640 and mode(etc) == 0o755
    settings = yaml.safe_load(config.read_text())
    assert settings["monitors"][0]["model"] == "/var/lib/edge-monitor/models/fan-id_00"
    assert "@" not in config.read_text(), "template placeholders left in the config"
    demo = state / "models/fan-id_00"
    cmp = filecmp.dircmp(DEMO, demo)
    assert not (cmp.left_only or cmp.right_only or cmp.diff_files), "the demo bundle is copied as it is"
    assert mode(state) == 0o750 and mode(demo) == 0o750 and mode(demo / "model.tflite") == 0o640
    assert (etc / "mqtt-password").read_text() == "s3cret\n" and mode(etc / "mqtt-password") == 0o640
    unit = root / "etc/systemd/system/edge-monitor.service"
    assert unit.read_text() == UNIT.read_text() and mode(unit) == 0o644
    if shutil.which("systemctl"):
        link = root / "etc/systemd/system/multi-user.target.wants/edge-monitor.service"
        assert link.is_symlink() and os.readlink(link) == "/etc/systemd/system/edge-monitor.service"
    if IS_ROOT:
        user = [ln.split(":") for ln in (root / "etc/passwd").read_text().splitlines() if ln.startswith("edge-monitor:")]
        assert len(user) == 1, "useradd --root created the service user inside the root"
        uid, gid = int(user[0][2]), int(user[0][3])
        audio = next(ln for ln in (root / "etc/group").read_text().splitlines() if ln.startswith("audio:"))
        assert "edge-monitor" in audio.split(":")[3].split(",")
        assert (state.stat().st_uid, state.stat().st_gid) == (uid, gid)
        assert (demo / "model.json").stat().st_uid == uid
        assert (config.stat().st_uid, config.stat().st_gid) == (0, gid)
        assert (etc / "mqtt-password").stat().st_gid == gid
    else:
        assert "skipped" in done, "without root, no user is created"

    # the installed command runs (dependencies borrowed, see the module docstring), from the wheel's copy
    borrow_test_dependencies(venv)
    r = run([venv / "bin/python", "-c", "import edge_monitor; print(edge_monitor.__file__)"], cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith(str(venv)), r.stdout + r.stderr
    r = run([entry, "--version"], cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "edge-monitor 0.1.0", r.stdout + r.stderr
    # ... and accepts the installed template config with the installed demo model (paths read inside root)
    probe = etc / "probe.yaml"
    probe.write_text(config.read_text().replace("/var/lib/edge-monitor/", f"{state}/"))
    r = run([entry, "check", probe], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    probe.unlink()

    # a plant engineer edits the config; a second run (even with --config) must keep it, and change nothing
    edited = config.read_text().replace("channel: 0", "channel: 1") + "# edited on the node\n"
    config.write_text(edited)
    other = tmp_path / "other.yaml"
    other.write_text(TEMPLATE.read_text())
    second = install(root, wheel, "--config", other)
    assert second.returncode == 0, second.stdout + second.stderr
    done = actions(second.stdout)
    assert not {"installed", "updated", "created", "enabled"} & set(done), second.stdout
    assert any("config.yaml" in line and "never overwritten" in line for line in done.get("kept", [])), second.stdout
    assert "nothing to do, everything unchanged" in second.stdout
    assert config.read_text() == edited and mode(config) == 0o640
    assert (etc / "mqtt-password").read_text() == "s3cret\n"


def test_install_from_a_node_bundle_without_the_tree(tmp_path, wheel):
    """What a node gets: deploy/, systemd/ and dist/ with the wheel built once — no pyproject.toml, no
    sources, nothing to compile. install.sh finds the wheel in dist/, installs it, and a second run
    changes nothing; two wheels there are refused with one line."""
    bundle = tmp_path / "edge-monitor-node"
    shutil.copytree(REPO / "deploy", bundle / "deploy")
    shutil.copytree(REPO / "systemd", bundle / "systemd")
    (bundle / "dist").mkdir()
    shutil.copy(wheel, bundle / "dist")
    script = bundle / "deploy" / "install.sh"
    cmd = ["bash", script, "--root", tmp_path / "root", "--no-apt", "--no-enable", "--python", sys.executable,
           "--pip-args", "--no-deps --no-index"]
    first = run(cmd)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"installed  edge-monitor ({wheel.name})" in first.stdout, first.stdout
    stamp = tmp_path / "root/opt/edge-monitor/installed-wheel"
    assert stamp.read_text().startswith(wheel.name + " ")
    second = run(cmd)
    assert second.returncode == 0 and "nothing to do, everything unchanged" in second.stdout, second.stdout
    shutil.copy(wheel, bundle / "dist" / wheel.name.replace("0.1.0", "0.1.1"))
    refused = run(cmd)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "2 wheels in" in lines[0] and "--wheel" in lines[0], refused.stderr


def test_install_model_option_and_errors(tmp_path, wheel):
    root = tmp_path / "root"
    bundle = tmp_path / "pump-id_02"
    shutil.copytree(DEMO, bundle)
    r = install(root, wheel, "--no-enable", "--model", bundle)
    assert r.returncode == 0, r.stdout + r.stderr
    models = root / "var/lib/edge-monitor/models"
    assert sorted(p.name for p in models.iterdir()) == ["pump-id_02"], "no demo when a model is given"
    config = yaml.safe_load((root / "etc/edge-monitor/config.yaml").read_text())
    assert config["monitors"][0]["model"] == "/var/lib/edge-monitor/models/pump-id_02"
    # a different bundle of the same name is not replaced behind the daemon's back: that is rollout.sh's job
    (bundle / "report.md").write_text("retrained\n")
    r = install(root, wheel, "--no-enable", "--model", bundle)
    assert r.returncode == 0 and "rollout.sh" in r.stdout
    assert (models / "pump-id_02/report.md").read_text() != "retrained\n"

    def fails(result: subprocess.CompletedProcess, code: int, text: str) -> None:
        assert result.returncode == code, result.stdout + result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and text in lines[0], result.stderr

    fails(run(["bash", INSTALL, "--frobnicate"]), 2, "unknown argument: --frobnicate")
    fails(install(root, wheel, "--model", tmp_path / "nowhere"), 1, "not a model bundle")
    old_python = tmp_path / "python3.9"
    old_python.write_text("#!/bin/sh\necho 3.9\n")
    old_python.chmod(0o755)
    fails(install(tmp_path / "r2", wheel, "--python", old_python), 1, "Python >= 3.10 needed")
    assert not (tmp_path / "r2/opt/edge-monitor/venv").exists()
    # without --root, only root may install (as root, the script is run as user nobody)
    cmd = ["bash", INSTALL, "--no-apt", "--wheel", wheel]
    if IS_ROOT:
        if shutil.which("runuser") is None:
            return
        cmd = ["runuser", "-u", "nobody", "--", "bash", "-s", "--", "--no-apt", "--wheel", wheel]
    fails(run(cmd, input=INSTALL.read_text(), cwd="/"), 1, "must run as root")


# --- rollout.sh -------------------------------------------------------------------------------------

@pytest.fixture
def edge_monitor() -> Path:
    em = Path(sys.executable).parent / "edge-monitor"
    if not em.exists():
        pytest.skip(f"no edge-monitor command beside {sys.executable} (pip install -e .)")
    return em


@pytest.fixture
def node(tmp_path) -> Path:
    """A scratch node: the template config (as install.sh writes it) and the demo bundle as fan-id_00."""
    root = tmp_path / "root"
    (root / "etc/edge-monitor").mkdir(parents=True)
    (root / "etc/edge-monitor/config.yaml").write_text(
        TEMPLATE.read_text().replace("@NODE@", "test-node").replace("@MODEL@", "fan-id_00"))
    models = root / "var/lib/edge-monitor/models"
    models.mkdir(parents=True)
    shutil.copytree(DEMO, models / "fan-id_00")
    return root


def new_bundle(tmp_path: Path, note: str, *, break_sha: bool = False) -> Path:
    bundle = tmp_path / "incoming" / "fan-id_00"
    if bundle.exists():
        shutil.rmtree(bundle)
    shutil.copytree(DEMO, bundle)
    (bundle / "report.md").write_text(note)   # marks which bundle is where
    if break_sha:
        manifest = json.loads((bundle / "model.json").read_text())
        manifest["model"]["sha256"] = "0" * 64
        (bundle / "model.json").write_text(json.dumps(manifest, indent=1))
    return bundle


def rollout(*args, env=None) -> subprocess.CompletedProcess:
    return run(["bash", ROLLOUT, *args], env=env)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(root: Path) -> list[str]:
    etc = list((root / "etc/edge-monitor").glob(".config.rollout-*"))
    new = list((root / "var/lib/edge-monitor/models").glob("*.new"))
    return [str(p) for p in etc + new]


def test_rollout_swaps_a_good_bundle_and_keeps_the_previous(tmp_path, node, edge_monitor):
    models = node / "var/lib/edge-monitor/models"
    r = rollout("--root", node, "--edge-monitor", edge_monitor, new_bundle(tmp_path, "v2\n"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "rolled out fan-id_00" in r.stdout
    assert (models / "fan-id_00/report.md").read_text() == "v2\n"
    assert (models / "fan-id_00.prev/report.md").read_bytes() == (DEMO / "report.md").read_bytes()
    assert not leftovers(node)

    # the next rollout replaces .prev with the bundle it replaces
    r = rollout("--root", node, "--edge-monitor", edge_monitor, new_bundle(tmp_path, "v3\n"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert (models / "fan-id_00/report.md").read_text() == "v3\n"
    assert (models / "fan-id_00.prev/report.md").read_text() == "v2\n"

    # manual rollback: .prev comes back, the replaced one becomes .prev (so it can be rolled forward again)
    r = rollout("--root", node, "--edge-monitor", edge_monitor, "--rollback", "fan-id_00")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (models / "fan-id_00/report.md").read_text() == "v2\n"
    assert (models / "fan-id_00.prev/report.md").read_text() == "v3\n"


def test_rollout_rejects_a_broken_bundle_and_changes_nothing(tmp_path, node, edge_monitor):
    models = node / "var/lib/edge-monitor/models"
    before = snapshot(models)
    r = rollout("--root", node, "--edge-monitor", edge_monitor, new_bundle(tmp_path, "bad\n", break_sha=True))
    assert r.returncode == 1, r.stdout + r.stderr
    errors = r.stderr.strip().splitlines()
    assert len(errors) == 1 and "rejected, nothing changed" in errors[0], r.stderr
    assert "model.sha256" in errors[0], "the check names the field that is wrong"
    after = snapshot(models)
    after.pop(".rollout.lock", None)
    assert after == before
    assert not leftovers(node)


def test_rollout_refuses_a_bundle_no_monitor_uses(tmp_path, node, edge_monitor):
    bundle = new_bundle(tmp_path, "v2\n")
    r = rollout("--root", node, "--edge-monitor", edge_monitor, "--name", "pump-id_04", bundle)
    assert r.returncode == 1 and "no monitor" in r.stderr, r.stdout + r.stderr
    assert not (node / "var/lib/edge-monitor/models/pump-id_04").exists()
    assert not leftovers(node)


FAKE_SYSTEMCTL = r"""#!/bin/sh
# stand-in for systemctl: an active service whose main PID changes after the first reload when
# FAKE_MODE=restart (a daemon that crashed and was restarted)
echo "systemctl $*" >>"$FAKE_LOG"
reloads=$(grep -c '^systemctl reload' "$FAKE_LOG")
case "$*" in
  "is-active --quiet "*) exit 0 ;;
  "is-active "*) echo active ;;
  "show -p MainPID --value "*)
    if [ "$FAKE_MODE" = restart ] && [ "$reloads" -ge 1 ]; then echo 200; else echo 100; fi ;;
  "show -p NRestarts --value "*) echo 0 ;;
  "reload "*) exit 0 ;;
  *) echo "fake systemctl: unexpected $*" >&2; exit 1 ;;
esac
"""

FAKE_JOURNALCTL = r"""#!/bin/sh
# stand-in for journalctl: after the first reload, FAKE_MODE=journal makes the daemon report a rejection
echo "journalctl $*" >>"$FAKE_LOG"
if [ "$FAKE_MODE" = journal ] && [ "$(grep -c '^systemctl reload' "$FAKE_LOG")" = 1 ]; then
  echo '{"event": "reload rejected", "level": "error", "error": "monitors[0]: cannot open the audio device"}'
fi
"""


@pytest.mark.parametrize("fake_mode", ["ok", "restart", "journal"])
def test_rollout_reload_watch_and_rollback(tmp_path, node, edge_monitor, fake_mode):
    if not IS_ROOT:
        pytest.skip("rollout.sh reloads systemd only when run as root")
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    for name, text in (("systemctl", FAKE_SYSTEMCTL), ("journalctl", FAKE_JOURNALCTL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls"
    log.touch()
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_LOG=str(log), FAKE_MODE=fake_mode)
    models = node / "var/lib/edge-monitor/models"
    config = node / "etc/edge-monitor/config.yaml"   # a node at a real path: no --root, so absolute paths
    config.write_text(config.read_text().replace("/var/lib/edge-monitor/", f"{node}/var/lib/edge-monitor/"))
    r = rollout("--config", config, "--models", models,
                "--edge-monitor", edge_monitor, "--wait", "0", new_bundle(tmp_path, "v2\n"), env=env)
    reloads = [ln for ln in log.read_text().splitlines() if ln.startswith("systemctl reload")]
    if fake_mode == "ok":
        assert r.returncode == 0, r.stdout + r.stderr
        assert reloads == ["systemctl reload edge-monitor"]
        assert (models / "fan-id_00/report.md").read_text() == "v2\n"
        assert (models / "fan-id_00.prev").is_dir()
    else:
        assert r.returncode == 1, r.stdout + r.stderr
        assert ("restarted after the reload" if fake_mode == "restart" else "reload rejected") in r.stderr
        assert len(reloads) == 2, "the rollback reloads the previous bundle"
        assert (models / "fan-id_00/report.md").read_bytes() == (DEMO / "report.md").read_bytes()
        assert (models / "fan-id_00.failed/report.md").read_text() == "v2\n"
        assert not (models / "fan-id_00.prev").exists()
    assert not leftovers(node)
