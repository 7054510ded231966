"""The default DVC remote (.dvc/config): a folder beside the repository that `dvc push` fills and `dvc pull`
restores from, tried in a throw-away git + DVC repository laid out like a clone of this one."""

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(args: list[str], cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def dvc(*args: str, cwd: Path) -> str:
    return run([sys.executable, "-m", "dvc", *args], cwd)


def test_push_then_pull_through_the_default_local_remote(tmp_path):
    clone = tmp_path / "diffusionret"
    clone.mkdir()
    run(["git", "init", "-q"], clone)
    dvc("init", "-q", cwd=clone)
    shutil.copyfile(REPO / ".dvc" / "config", clone / ".dvc" / "config")  # the project's default remote
    (clone / "dvc.yaml").write_text(
        "stages:\n  features:\n    cmd: python -c \"open('features.txt', 'w').write('cached features\\\\n')\"\n"
        "    outs:\n      - features.txt\n")
    dvc("repro", "-q", cwd=clone)
    dvc("push", cwd=clone)
    remote = tmp_path / "diffusionret-dvc-remote"  # beside the repository, outside it
    assert any(path.is_file() for path in remote.rglob("*")), f"dvc push wrote nothing under {remote}"

    (clone / "features.txt").unlink()  # a fresh machine: neither the output nor the cache
    shutil.rmtree(clone / ".dvc" / "cache")
    dvc("pull", cwd=clone)
    assert (clone / "features.txt").read_text() == "cached features\n"
