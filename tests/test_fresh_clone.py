"""The README's promise as a stranger meets it (issue 36): a copy of the repository in a folder of its own,
with no ``../shared`` fixtures beside it and no ``JAXVIZ_FIXTURES``, runs every README command.

The copy holds what a clone holds (``git ls-files``: tracked files, plus files not yet committed that git
does not ignore); its own ``jaxviz`` is the one imported (the copy's root is first on ``sys.path``), so a
file that only exists beside this checkout, or a data file left out of the package, fails here.
"""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _clone(dest: pathlib.Path) -> pathlib.Path:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout to list the repository's files")
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.split(b"\0")
    repo = dest / "jaxviz-clone"
    for name in filter(None, names):
        src = ROOT / os.fsdecode(name)
        if src.is_file():  # a file deleted in the working tree but still tracked is not in a clone either
            (repo / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / os.fsdecode(name))
    return repo


def _env(repo: pathlib.Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("JAXVIZ_FIXTURES", "PYTEST_XDIST_WORKER",
                                                           "PYTEST_CURRENT_TEST")}
    env["PYTHONPATH"] = str(repo)
    return env


def test_readme_commands_run_in_a_clone_with_no_fixtures_beside_it(tmp_path):
    repo = _clone(tmp_path)
    assert not (repo.parent / "shared").exists()
    where = subprocess.run([sys.executable, "-c", "import jaxviz, jaxviz.io.datasets as d; print(jaxviz.__file__); "
                            "print(d.fixture_path('data/fruits_300.npy')); print(d.fruits()[0].shape)"],
                           cwd=repo, env=_env(repo), capture_output=True, text=True)
    assert where.returncode == 0, where.stderr
    file, fixture, shape = where.stdout.split("\n")[:3]
    assert pathlib.Path(file).resolve().is_relative_to(repo.resolve())  # the copy's own package
    assert fixture == "None" and shape == "(300, 28, 28, 1)"  # no fixtures; fruits from the package
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", "-rs",
                          "tests/test_readme.py"], cwd=repo, env=_env(repo), capture_output=True, text=True)
    tail = "\n".join((run.stdout + run.stderr).splitlines()[-30:])
    assert run.returncode == 0, tail
    assert " passed" in tail and "failed" not in tail, tail
