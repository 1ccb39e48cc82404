"""`edge-monitor --help` lists the commands in workflow order; each command's --help has its line and an example."""

from __future__ import annotations

import re
import shlex

import pytest

from edge_monitor.commands import COMMANDS, build_parser, main

# The workflow (issue 16): commission a machine, run it, look after the node, then the tools. The table
# in edge_monitor/commands/__init__.py decides what exists; this decides where it goes.
WORKFLOW = ["record", "train", "evaluate", "calibrate", "replay", "run", "check", "label", "devices",
            "mqtt-test", "synth", "demo", "make-demo"]


def help_text(capsys, monkeypatch, *argv: str) -> str:
    monkeypatch.setenv("COLUMNS", "80")  # a common terminal: an example must not be wrapped there
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_the_table_follows_the_workflow():
    unknown = [name for name in COMMANDS if name not in WORKFLOW]
    assert not unknown, f"place {unknown} in WORKFLOW (tests/test_help.py) where it belongs in the work"
    assert list(COMMANDS) == [name for name in WORKFLOW if name in COMMANDS]


def test_top_level_help_lists_every_command_in_table_order(capsys, monkeypatch):
    text = help_text(capsys, monkeypatch)
    listed = re.findall(r"^    (\S+)\s", text, flags=re.MULTILINE)
    assert listed == list(COMMANDS)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_command_help_has_its_line_and_an_example_that_parses(name, capsys, monkeypatch):
    command = COMMANDS[name]
    text = help_text(capsys, monkeypatch, name)
    lines = text.splitlines()
    assert command.help in lines  # the one-line description, unwrapped
    examples = [line for line in lines if line.startswith("example: ")]
    assert examples == [f"example: {command.example}"]
    argv = shlex.split(command.example)
    assert argv[:2] == ["edge-monitor", name]
    args = build_parser(argv[1:]).parse_args(argv[1:])  # a UserError here: the example is wrong
    assert args.command == name
