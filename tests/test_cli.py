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


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "corolab.cli", "serve", "--port", "1", *args],
                          capture_output=True, text=True, timeout=120)


def test_serve_refuses_what_cannot_work_in_one_line() -> None:
    """A device that is not there, a model that is not on disk, an impossible option: one line saying what
    to do, exit code 2, no traceback (and no server started: port 1 is never bound)."""
    import torch

    cases = [(["--model", "no-such-org/no-such-model"], "not in the local Hugging Face cache"),
             (["--max-batch-size", "0"], "--max-batch-size must be at least 1"),
             (["--model", "fake", "--threads", "0"], "--threads must be at least 1")]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "--device cuda:"))
    for args, message in cases:
        done = serve(*args)
        assert done.returncode == 2, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in done.stderr, (args, done.stderr)


def test_serve_reads_every_default_from_serve_config() -> None:
    from corolab.serving.config import ServeConfig
    from corolab.serving.server.cli import config_from

    parser = cli.build_parser(only="serve")
    assert config_from(parser.parse_args(["serve"])) == ServeConfig()
    changed = config_from(parser.parse_args(["serve", "--threads", "1", "--prefill-budget", "64",
                                             "--served-model-name", "a", "--served-model-name", "b"]))
    assert (changed.threads, changed.prefill_budget, changed.served_model_names) == (1, 64, ["a", "b"])
