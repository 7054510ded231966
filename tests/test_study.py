"""The study runner (pipeline/study.py) that `diffusionret seeds` and `diffusionret heads` share, with a stand-in
`dvc` on PATH that records its calls and writes an evaluation cell (fast: the real `dvc exp run` studies are
tests/test_seeds.py and tests/test_heads_comparison.py, slow)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from diffusionret.pipeline.study import StudyRun, run_study

REPO = Path(__file__).resolve().parents[1]
FAKE_DVC = r'''#!{python}
import json, os, subprocess, sys
from pathlib import Path
args = sys.argv[1:]
assert args[:3] == ["exp", "run", "--name"], args
name, rest = args[3], args[4:]
overrides = [rest[i + 1] for i in range(len(rest)) if rest[i] == "-S"]
targets = [arg for i, arg in enumerate(rest) if arg != "-S" and (i == 0 or rest[i - 1] != "-S")]
params = Path("params.yaml")
with open("calls.jsonl", "a") as log:
    log.write(json.dumps({{"name": name, "overrides": overrides, "targets": targets,
                          "clean_params": "# applied" not in params.read_text()}}) + "\n")
params.write_text(params.read_text() + f"# applied {{name}}\n")  # as dvc does: the -S values stay in the file
subprocess.run(["git", "update-ref", f"refs/exps/00/000000/{{name}}", "HEAD"], check=True)
if name.startswith(os.environ.get("FAKE_FAIL", "-")):
    sys.exit(3)
for cell in ("synthetic__synthetic", "synthetic__synthetic-shift", "synthetic__synthetic-textshift"):
    out = Path("eval") / cell
    out.mkdir(parents=True, exist_ok=True)
    for file in ("metrics.json", "ranks.npz", "cell.json"):
        (out / file).write_text(json.dumps({{"experiment": name}}))
'''


@pytest.fixture
def repo(tmp_path, monkeypatch):
    shutil.copy2(REPO / "params.yaml", tmp_path / "params.yaml")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dvc").write_text(FAKE_DVC.format(python=sys.executable))
    (bin_dir / "dvc").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "params.yaml"], cwd=tmp_path, check=True)
    subprocess.run(git + ["commit", "-qm", "params"], cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def calls(repo):
    return [json.loads(line) for line in (repo / "calls.jsonl").read_text().splitlines()]


RUNS = [StudyRun("a", ("model.head=wti",), ("evaluate",), {"head": "wti"}),
        StudyRun("b", ("model.head=emcl",), ("evaluate",), {"head": "emcl"}),
        StudyRun("c", ("model.head=dicosa", "postprocess.qbnorm_k=1"), (), {"head": "dicosa"})]


def test_runs_resume_after_a_failure_and_a_new_commit_and_never_reuse_a_name(repo, monkeypatch):
    subprocess.run(["git", "update-ref", "refs/exps/00/000000/a", "HEAD"], cwd=repo, check=True)  # an older study's
    monkeypatch.setenv("FAKE_FAIL", "b")
    found = run_study(repo, RUNS, repo / "out", keep_going=True,
                      collect_extra=lambda root, params, folder: (folder / "extra.txt").write_text(params.model.head))
    assert found == {"a": repo / "out" / "a", "b": None, "c": repo / "out" / "c"}
    first = calls(repo)
    assert [call["name"] for call in first] == ["a-r2", "b", "c"]  # the existing experiment `a` is kept
    assert first[0]["overrides"] == ["model.head=wti"] and first[0]["targets"] == ["evaluate"]
    assert first[2]["overrides"] == list(RUNS[2].overrides) and first[2]["targets"] == []
    assert all(call["clean_params"] for call in first)  # each experiment starts from the study's params.yaml
    done = json.loads((repo / "out" / "a" / "done.json").read_text())
    assert (done["experiment"], done["overrides"], done["head"]) == ("a-r2", ["model.head=wti"], "wti")
    assert len(done["commit"]) == 40 and done["wall_seconds"] >= 0
    cell = repo / "out" / "c" / "synthetic__synthetic-shift" / "metrics.json"
    assert json.loads(cell.read_text()) == {"experiment": "c"}
    failed = json.loads((repo / "out" / "b" / "failed.json").read_text())
    assert failed["experiment"] == "b" and "exit 3" in failed["error"]
    assert not (repo / "out" / "b" / "done.json").exists()

    # a new commit, the failure fixed: only the failed run runs again
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qm", "new",
                    "--allow-empty"], cwd=repo, check=True)
    monkeypatch.delenv("FAKE_FAIL")
    again = run_study(repo, RUNS, repo / "out", keep_going=True)
    assert again == {key: repo / "out" / key for key in "abc"}
    assert [call["name"] for call in calls(repo)[len(first):]] == ["b-r2"]
    assert not (repo / "out" / "b" / "failed.json").exists()
    assert json.loads((repo / "out" / "a" / "done.json").read_text()) == done  # untouched

    # changed overrides are a different run: it runs again
    changed = [StudyRun("a", ("model.head=wti", "train.steps=5"), ("evaluate",), {"head": "wti"})]
    run_study(repo, changed, repo / "out")
    assert calls(repo)[-1]["name"] == "a-r3"


def test_without_keep_going_a_failure_stops_the_study(repo, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL", "a")
    with pytest.raises(RuntimeError, match="exit 3"):
        run_study(repo, RUNS, repo / "out")
    assert [call["name"] for call in calls(repo)] == ["a"]
    with pytest.raises(ValueError, match="distinct"):
        run_study(repo, [RUNS[0], RUNS[0]], repo / "out")
