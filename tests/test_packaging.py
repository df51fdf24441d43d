"""The project installs as a package: a wheel built from the checkout holds what a deployment runs.

The wheel is built from a copy of the tracked sources (the build writes build/ and *.egg-info into its source
tree; the checkout stays clean), installed with --no-deps into a target folder, and run from another directory
with this venv's interpreter, so every import comes from the installed copy and the dependencies from the venv.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib", reason="tomllib: Python 3.11+")
ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "setup.cfg", "README.md", "celeryconfig.py", "wsgi.py", "app", "tasks", "config", "bench"]


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirements(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [str(Requirement(line)) for line in lines if line]


def test_dependencies_are_requirements_txt_line_for_line():
    assert [str(Requirement(r)) for r in pyproject()["project"]["dependencies"]] == requirements(
        ROOT / "requirements.txt"
    )


def test_funasr_is_an_extra_pinned_as_install_sh_installs_it_and_hub_is_requirements_hub():
    extras = pyproject()["project"]["optional-dependencies"]
    (pin,) = re.findall(r"--no-deps (funasr==\S+)", (ROOT / "scripts" / "install.sh").read_text())
    assert extras["funasr"] == [pin]
    assert [str(Requirement(r)) for r in extras["hub"]] == requirements(ROOT / "requirements-hub.txt")
    assert not any(Requirement(r).name == "funasr" for r in pyproject()["project"]["dependencies"])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools", reason="pip wheel --no-build-isolation needs setuptools in the venv")
    src, dist = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    for name in SOURCES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(
            ROOT / name,
            src / name,
            **({"ignore": shutil.ignore_patterns("__pycache__", "out")} if (ROOT / name).is_dir() else {}),
        )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "-w",
            str(dist),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = dist.glob("funasr_stream-*.whl")
    return built


def test_the_wheel_ships_the_top_level_modules_static_files_and_console_script(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    static = {f"app/static/{p.name}" for p in (ROOT / "app" / "static").iterdir()}
    assert {
        "celeryconfig.py",
        "wsgi.py",
        "config/gunicorn.py",
        "config/cli.py",
        "bench/plan.py",
        "tasks/celery.py",
        "app/static/index.html",
    } | static <= names
    assert not any(n.startswith("tests/") for n in names)
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "funasr-stream = config.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert re.search(r"^Version: 0\.1\.0$", text, re.MULTILINE)
    assert 'Requires-Dist: funasr==1.4.16; extra == "funasr"' in text


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("target")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-compile",
            "--disable-pip-version-check",
            "--target",
            str(target),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return target


def run_installed(target: Path, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASR_")} | {"PYTHONPATH": str(target)}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_the_installed_package_imports_from_where_it_was_installed(installed, tmp_path):
    code = (
        "import importlib.util as u, pathlib, app, config.cli, bench.plan, celeryconfig;"
        "print([u.find_spec(m).origin for m in"
        "       ('app', 'tasks.celery', 'config.gunicorn', 'celeryconfig', 'wsgi')]);"
        "print((pathlib.Path(app.__file__).parent / 'static' / 'index.html').is_file())"
    )
    result = run_installed(installed, [sys.executable, "-c", code], tmp_path)
    assert result.returncode == 0, result.stderr
    origins, static = result.stdout.splitlines()
    assert origins.count(str(installed)) == 5 and static == "True"


def test_the_console_script_runs_help_config_and_the_gateway_config(installed, tmp_path):
    script = installed / "bin" / "funasr-stream"
    assert script.is_file()
    help_ = run_installed(installed, [str(script), "--help"], tmp_path)
    assert help_.returncode == 0 and "gateway" in help_.stdout and "plan" in help_.stdout
    table = run_installed(installed, [str(script), "config"], tmp_path)
    assert table.returncode == 0 and table.stdout.startswith("| variable | default | unit | meaning |")
    gateway = run_installed(installed, [str(script), "gateway", "--print-config"], tmp_path)
    assert gateway.returncode == 0, gateway.stderr
    assert f"= {installed / 'config' / 'gunicorn.py'}" in gateway.stdout  # found inside the installed package
