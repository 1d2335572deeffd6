"""A plain (not editable) install works from any directory: the shipped studies travel inside the wheel."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

from sweep.testing.stores import ROOT, load


def test_a_wheel_install_runs_the_default_study_from_another_directory(tmp_path, idx_dir):
    # Built from a copy: setuptools builds in the source folder, and a stale build/ there could ship old modules.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "mlruns", "*.egg-info", "__pycache__"))
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", dist, source],
                   check=True, cwd=tmp_path)
    (wheel,) = dist.glob("mnist_sweep-*.whl")
    env = tmp_path / "env"
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    purelib = Path(subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], text=True).strip())
    # The dependencies come from this environment (a path, so its editable install's hook is not run);
    # mnist-sweep itself only from the wheel.
    (purelib / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", wheel], check=True)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.check_output([python, "-c", "import sweep; print(sweep.__file__)"], cwd=elsewhere, text=True)
    assert Path(where.strip()).is_relative_to(purelib)
    done = subprocess.run([env / "bin" / "mnist-sweep", "run", "--trials", "2", "--data-dir", idx_dir],
                          cwd=elsewhere, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2/2 trials trained" in done.stdout
    assert len(load(elsewhere / "mlruns", "map").trials) >= 2  # the shipped default study, in ./mlruns
    shipped = subprocess.check_output([python, "-c", "from sweep.studyfile import study_path; print(study_path('accuracy'))"],
                                      cwd=elsewhere, text=True)
    assert Path(shipped.strip()).is_relative_to(purelib)
