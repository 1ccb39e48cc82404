"""tests/setup.sh, run the way CI cannot: with packages missing, a recording apt-get, as root and not.

The script runs for real (bash, its probes, ldconfig's real cache); what changes is its world: PATH is
one folder with links to the few real tools the script uses, a stand-in for every command a probe asks
for except the "missing" ones (so the result does not depend on what this machine has), and small
recording fakes of apt-get, ldconfig and sudo. The file probe (libasound2-plugins) is this machine's. "Not root" is a real unprivileged user
(nobody, through setpriv) when the tests run as root, else the tests' own user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tests" / "setup.sh"
BASH = shutil.which("bash") or "/bin/bash"
REAL_DIRS = os.environ.get("PATH", "").split(os.pathsep) + ["/usr/local/sbin", "/usr/sbin", "/sbin"]
REAL_LDCONFIG = shutil.which("ldconfig", path=os.pathsep.join(REAL_DIRS))
IS_ROOT = os.geteuid() == 0
NOBODY = 65534


def table() -> list[tuple[str, str, str]]:
    """(package, probe kind, probe argument) from `setup.sh --list`."""
    out = subprocess.run([BASH, str(SCRIPT), "--list"], capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        package, probe = line.split(" ", 1)
        kind, arg = probe.split(":", 1)
        rows.append((package, kind, arg))
    return rows


# What the script and the fakes below run, linked from this machine (linking all of PATH costs seconds
# on this disk); a tool missing here shows as "command not found" in the failing test's stderr.
TOOLS = ("id", "env", "mktemp", "tail", "rm", "grep", "ln", "true")


class World:
    """A PATH for the script: links to the real tools, stand-ins for the probed commands, fakes on request."""

    def __init__(self, hide: tuple[str, ...] = (), hide_libraries: tuple[str, ...] = ()):
        # not under pytest's tmp_path: that is private to root, and the script also runs as nobody here
        self.root = Path(tempfile.mkdtemp(prefix="edge-monitor-setup-test-"))
        self.root.chmod(0o777)
        self.bin = self.root / "bin"
        self.bin.mkdir()
        self.bin.chmod(0o777)  # the fake apt-get "installs" into it, maybe as nobody
        self.record = self.root / "calls.txt"
        probed = {arg for _, kind, arg in table() if kind == "command"}
        for name in sorted(probed - set(hide)):
            (self.bin / name).symlink_to("/bin/true")
        for name in TOOLS:
            real = shutil.which(name, path=os.pathsep.join(REAL_DIRS))
            assert real, f"{name} is not installed here"
            os.symlink(real, self.bin / name)
        self.python = self.root / "python-stand-in"  # python-module probes: present (see test_python_module_probe)
        self.python.write_text("#!/bin/sh\nexit 0\n")
        self.python.chmod(0o755)
        assert REAL_LDCONFIG, "ldconfig not found"
        drop = "".join(f" | grep -v -F '{lib}'" for lib in hide_libraries)
        self.fake("ldconfig", f'"{REAL_LDCONFIG}" "$@"{drop}\n')

    def fake(self, name: str, body: str) -> None:
        path = self.bin / name
        path.write_text("#!/bin/bash\n" + body)
        path.chmod(0o755)

    def fake_apt_get(self, installs: bool) -> None:
        """Records `<who> DEBIAN_FRONTEND=… apt-get ARGS`; with ``installs``, `install X` puts a stand-in X on PATH."""
        body = f'echo "uid=$(id -u) DEBIAN_FRONTEND=${{DEBIAN_FRONTEND:-}} apt-get $*" >> "{self.record}"\n'
        if installs:
            body += ('if [ "$1" = install ]; then for p in "$@"; do case $p in\n'
                     f'  mosquitto) ln -sf /bin/true "{self.bin}/mosquitto" ;;\n'
                     'esac; done; fi\n')
        self.fake("apt-get", body)

    def calls(self) -> list[str]:
        return self.record.read_text().splitlines() if self.record.exists() else []

    def run(self, *args: str, as_nobody: bool = False) -> subprocess.CompletedProcess:
        env = {"PATH": str(self.bin), "SETUP_EXTRA_PATH": "", "PYTHON": str(self.python), "HOME": str(self.root),
               "TMPDIR": str(self.root), "LANG": "C.UTF-8"}
        prefix: list[str] = []
        if as_nobody and IS_ROOT:
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                pytest.skip("setpriv (util-linux) is needed to run the script as an unprivileged user")
            prefix = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        return subprocess.run([*prefix, BASH, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                              timeout=60, cwd="/")

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def world():
    made: list[World] = []

    def make(**kwargs) -> World:
        made.append(World(**kwargs))
        return made[-1]

    yield make
    for w in made:
        w.close()


needs_root = pytest.mark.skipif(not IS_ROOT, reason="the install path runs apt-get as root: run the tests as root")


def test_nothing_missing_nothing_installed(world):
    w = world()
    w.fake_apt_get(installs=True)
    proc = w.run()
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    assert proc.stdout.splitlines() == [f"setup: all {len(table())} system packages the tests need are present"]
    assert w.calls() == []


@needs_root
def test_as_root_the_missing_package_is_installed_with_apt_get(world):
    w = world(hide=("mosquitto",))
    w.fake_apt_get(installs=True)
    proc = w.run()
    assert proc.returncode == 0, proc.stderr
    assert w.calls() == ["uid=0 DEBIAN_FRONTEND=noninteractive apt-get update -qq",
                         "uid=0 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto"]
    assert proc.stdout.splitlines() == [
        "setup: installing mosquitto (apt-get)",
        f"setup: installed; all {len(table())} system packages the tests need are present"]
    assert proc.stderr == ""


@needs_root
def test_as_root_an_install_that_leaves_the_probe_failing_is_an_error(world):
    w = world(hide=("mosquitto",), hide_libraries=("libportaudio.so.2",))
    w.fake_apt_get(installs=False)  # "succeeds" without installing anything
    proc = w.run()
    assert proc.returncode == 2
    assert w.calls()[-1] == "uid=0 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto libportaudio2"
    assert proc.stderr.splitlines() == [
        "setup: apt-get install finished, but its probe still fails for: "
        "mosquitto (command mosquitto) libportaudio2 (library libportaudio.so.2)"]


def test_not_root_names_the_exact_command_and_installs_nothing(world):
    w = world(hide=("mosquitto",), hide_libraries=("libportaudio.so.2",))
    w.fake_apt_get(installs=True)
    proc = w.run(as_nobody=True)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "setup: missing system packages: mosquitto libportaudio2; not root, so install them yourself with: "
        "sudo apt-get update && sudo apt-get install -y mosquitto libportaudio2"]
    assert w.calls() == []


def test_not_root_and_sudo_wants_a_password_is_the_same_one_line(world):
    w = world(hide=("mosquitto",))
    w.fake_apt_get(installs=True)
    w.fake("sudo", f'echo "uid=$(id -u) sudo $*" >> "{w.record}"\necho "sudo: a password is required" >&2\nexit 1\n')
    proc = w.run(as_nobody=True)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "setup: missing system packages: mosquitto; not root, so install them yourself with: "
        "sudo apt-get update && sudo apt-get install -y mosquitto"]
    uid = NOBODY if IS_ROOT else os.geteuid()
    assert w.calls() == [f"uid={uid} sudo -n true"]  # asked whether it may, never ran apt-get


def test_not_root_with_password_less_sudo_installs_through_it(world):
    w = world(hide=("mosquitto",))
    w.fake_apt_get(installs=True)
    # like a real sudo, the fake resets the environment: DEBIAN_FRONTEND must come with the command
    w.fake("sudo", f'echo "uid=$(id -u) sudo $*" >> "{w.record}"\n[ "$1" = -n ] && shift\n'
                   'exec env -u DEBIAN_FRONTEND "$@"\n')
    proc = w.run(as_nobody=True)
    assert proc.returncode == 0, proc.stderr
    uid = NOBODY if IS_ROOT else os.geteuid()
    assert w.calls() == [f"uid={uid} sudo -n true",
                         f"uid={uid} sudo -n env DEBIAN_FRONTEND=noninteractive apt-get update -qq",
                         f"uid={uid} DEBIAN_FRONTEND=noninteractive apt-get update -qq",
                         f"uid={uid} sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto",
                         f"uid={uid} DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto"]
    assert proc.stdout.splitlines()[0] == "setup: installing mosquitto (apt-get via sudo)"


def test_no_apt_get_says_so_in_one_line(world):
    w = world(hide=("mosquitto",))  # and no apt-get at all
    proc = w.run()
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "setup: missing system packages: mosquitto; there is no apt-get here: install their equivalents with "
        "your package manager (the probes are in tests/setup.sh)"]


def test_check_only_probes(world):
    w = world(hide=("npm", "sox"))
    w.fake_apt_get(installs=True)
    proc = w.run("--check")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [  # in the table's order, whatever order they were hidden in
        "setup: missing system packages: sox npm; install them with: "
        "sudo apt-get update && sudo apt-get install -y sox npm"]
    assert w.calls() == []


def test_commands_outside_path_are_found_in_the_sbin_folders(world):
    """Debian puts mosquitto in /usr/sbin, off a user's PATH: the probe looks there too (SETUP_EXTRA_PATH)."""
    w = world(hide=("mosquitto",))
    sbin = w.root / "sbin"
    sbin.mkdir()
    (sbin / "mosquitto").symlink_to("/bin/true")
    env = {"PATH": str(w.bin), "SETUP_EXTRA_PATH": str(sbin), "PYTHON": str(w.python)}
    proc = subprocess.run([BASH, str(SCRIPT), "--check"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_readme_names_every_package_the_script_installs():
    top = (REPO / "README.md").read_text().split("\n---\n", 1)[0]
    missing = [package for package, _, _ in table() if f"`{package}`" not in top]
    assert not missing, f"README's top does not name {missing}"
    assert "bash tests/run.sh" in top


def test_run_sh_and_ci_call_the_set_up():
    run_sh = (REPO / "tests" / "run.sh").read_text()
    assert "bash tests/setup.sh\n" in run_sh
    assert run_sh.index("bash tests/setup.sh") < run_sh.index("-m venv")
    ci = (REPO / ".ci" / "run").read_text()
    assert "apt-get" not in ci  # one list, in tests/setup.sh
    assert "bash tests/run.sh" in ci and "bash tests/arm64.sh" in ci


def test_the_table_names_real_probe_kinds_once_each():
    rows = table()
    assert {kind for _, kind, _ in rows} <= {"command", "file", "library", "python-module"}
    assert len({package for package, _, _ in rows}) == len(rows)


def test_python_module_probe_uses_the_python_that_makes_the_venvs(world, tmp_path):
    """python3-venv is probed by importing ensurepip with $PYTHON (Debian ships it in python3-venv)."""
    w = world()
    env = {"PATH": str(w.bin), "SETUP_EXTRA_PATH": "", "PYTHON": sys.executable}
    proc = subprocess.run([BASH, str(SCRIPT), "--check"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    shadow = tmp_path / "shadow"  # PYTHONPATH comes before the standard library: ensurepip "not installed"
    shadow.mkdir()
    (shadow / "ensurepip.py").write_text("raise ImportError('not installed')\n")
    proc = subprocess.run([BASH, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60,
                          env={**env, "PYTHONPATH": str(shadow)})
    assert proc.returncode == 2
    assert proc.stderr.startswith("setup: missing system packages: python3-venv; "), proc.stderr
