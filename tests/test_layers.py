"""The folder layout is the architecture: import rules between layers, and lazy imports of the command line.

- ``edge_monitor.core`` imports nothing from ``edge_monitor.node`` or ``edge_monitor.commands`` (nor paho,
  sounddevice, structlog's configuration, TensorFlow): it is pure and I/O-free.
- ``edge_monitor.node`` imports ``core`` but never ``commands`` or ``training``.
- ``training`` imports only ``edge_monitor.core`` (and the package root's version and demo path).
- The command line imports only the chosen command's module.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

RULES = {
    # layer folder: (forbidden module prefixes)
    "edge_monitor/core": ("edge_monitor.node", "edge_monitor.commands", "training", "paho", "sounddevice",
                          "structlog", "tensorflow", "yaml"),
    "edge_monitor/node": ("edge_monitor.commands", "training", "tensorflow"),
    "training": ("edge_monitor.node", "edge_monitor.commands"),
}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports (absolute names; relative imports resolved against its package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # `from edge_monitor import node` imports the layer too
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def violations(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in sorted((REPO / folder).rglob("*.py")):
        for line, module in imports_of(path):
            if any(module == f or module.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    return bad


@pytest.mark.parametrize("folder", sorted(RULES))
def test_layer_import_rules(folder):
    assert violations(folder, RULES[folder]) == []


def test_the_rule_checker_sees_a_violation(tmp_path, monkeypatch):
    """The checker itself can fail: a core module importing the node layer is caught (relative import too)."""
    fake = tmp_path / "edge_monitor" / "core"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text("from ..node import settings\nimport paho.mqtt.client\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    bad = violations("edge_monitor/core", RULES["edge_monitor/core"])
    assert bad == ["edge_monitor/core/bad.py:1 imports edge_monitor.node",
                   "edge_monitor/core/bad.py:1 imports edge_monitor.node.settings",
                   "edge_monitor/core/bad.py:2 imports paho.mqtt.client"]


def test_layers_are_folders():
    for layer in ("core", "node", "commands", "node/mqtt"):
        assert (REPO / "edge_monitor" / layer / "__init__.py").is_file()
    flat = sorted(p.name for p in (REPO / "edge_monitor").glob("*.py"))
    assert flat == ["__init__.py", "__main__.py"]


def loaded_modules(*argv: str, extra: str = "") -> set[str]:
    """Modules loaded by ``edge-monitor ARGV`` in a fresh interpreter (run up to the parse, or fully)."""
    code = ("import sys, json\nfrom edge_monitor.commands import main\n"
            f"try:\n    main({list(argv)!r})\nexcept SystemExit:\n    pass\n{extra}"
            "print(json.dumps(sorted(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.splitlines()[-1]))


def test_help_imports_no_command_module():
    mods = loaded_modules("--help")
    assert not any(m.startswith(("training", "edge_monitor.node.daemon", "edge_monitor.commands.replay", "paho",
                                 "numpy", "scipy")) for m in mods), sorted(m for m in mods if "edge" in m)


def test_replay_help_imports_only_replay():
    mods = loaded_modules("replay", "--help")
    assert "edge_monitor.commands.replay" in mods
    # (no "ssl" here: structlog imports asyncio, which imports ssl; see the next test)
    assert not {m for m in mods if m.startswith(("training", "paho", "edge_monitor.node.daemon",
                                                  "edge_monitor.commands.check", "tensorflow", "sounddevice"))}


def test_run_without_mqtt_imports_no_paho_ssl_or_training(tmp_path):
    """``edge-monitor run`` with MQTT disabled, up to the daemon's start: no paho or training loaded.

    (``ssl`` is loaded all the same: structlog imports asyncio, which imports ssl. Our own code imports
    ssl only in ``node/mqtt``; the check below holds that line.)"""
    config = tmp_path / "config.yaml"
    config.write_text(f"node: n1\nmonitors:\n  - name: m\n    model: {REPO / 'edge_monitor/demo/fan-id_00'}\n")
    code = ("import sys, json\nfrom edge_monitor.commands import build_parser\n"
            "from edge_monitor.node.config import load\nfrom edge_monitor.node.daemon import Daemon\n"
            "from edge_monitor.node.bundles import open_bundles\n"
            f"args = build_parser(['run', '--config', {str(config)!r}]).parse_args(['run', '--config', {str(config)!r}])\n"
            "import edge_monitor.commands.run\n"
            f"s = load({str(config)!r}); open_bundles(s); d = Daemon(args.config, s); d._start_publisher()\n"
            "print(json.dumps(sorted(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    mods = set(json.loads(proc.stdout.splitlines()[-1]))
    assert "edge_monitor.node.daemon" in mods
    assert not {m for m in mods if m.split(".")[0] in ("paho", "training", "tensorflow", "scipy")
                or m.startswith("edge_monitor.node.mqtt")}
