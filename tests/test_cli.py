"""The ``corolab`` command is one entry point whose sub-commands load lazily."""

from __future__ import annotations

import subprocess
import sys

from corolab import cli


def test_help_lists_every_command(capsys) -> None:
    assert cli.main([]) == 2
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_console_script_runs_in_a_fresh_interpreter() -> None:
    done = subprocess.run([sys.executable, "-m", "corolab.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "serve" in done.stdout and "lab" in done.stdout


def test_lab_command_does_not_import_torch() -> None:
    code = "import sys; from corolab import cli; cli.build_parser(only='lab'); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
