"""A study: named DVC experiments run one after another in the workspace, each collected into its own folder.

`diffusionret seeds` (one experiment per seed) and `diffusionret heads` (one per similarity head and seed) are both
studies. Each run is a `dvc exp run --name <key> -S ... [targets]`; after it, the workspace holds its outputs, and
its evaluation cells (eval/<A>__<B>/{metrics.json, ranks.npz, cell.json}) plus whatever the study's `collect_extra`
adds are copied to <out_dir>/<key>/, with a done.json naming the experiment, its overrides, the git commit it ran
at and its wall time. The folders are the study's memory: a killed study, or the same study after a new git
commit, re-runs only the runs without a done.json of the same overrides (git experiment refs are not needed, and
an experiment name already taken gets a `-r<n>` suffix, so an earlier experiment is never overwritten).

Every experiment starts from the params.yaml the study started with (DVC writes each experiment's -S values into
the workspace's params.yaml, which would otherwise leak into the next run); the last experiment stays applied in
the workspace, as after any `dvc exp run`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from diffusionret.config import Params, load_params
from diffusionret.pipeline.paths import Paths

CELL_FILES = ("metrics.json", "ranks.npz", "cell.json")
DONE, FAILED = "done.json", "failed.json"


@dataclass(frozen=True)
class StudyRun:
    key: str                       # the folder under the study's out_dir and the experiment's name: seed-3, emcl-seed-0
    overrides: tuple[str, ...]     # `dvc exp run -S` values, in order (a later value of the same key wins)
    targets: tuple[str, ...] = ()  # stages to run (and their upstream); () = the whole DAG
    record: dict = field(default_factory=dict)  # what done.json / failed.json also hold (seed, head, ...)


def existing_experiments(repo: Path) -> set[str]:
    """Names of the DVC experiments already in the repository (refs/exps/.../<name>)."""
    found = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=repo,
                           capture_output=True, text=True, check=False).stdout.split()
    return {ref.rsplit("/", 1)[-1] for ref in found}


def unique_name(base: str, taken: set[str]) -> str:
    """`base`, or `base-r<n>` when a DVC experiment of that name exists (an earlier study's is kept)."""
    name, attempt = base, 1
    while name in taken:
        attempt += 1
        name = f"{base}-r{attempt}"
    return name


def cells(params: Params) -> list[tuple[str, str]]:
    return [(trained, evaluated) for trained in params.train.benchmarks for evaluated in params.eval.benchmarks]


def collect_cells(repo: Path, params: Params, destination: Path, experiment: str) -> None:
    """Copy each cell's metrics.json, ranks.npz and cell.json to destination/<A>__<B>/."""
    paths = Paths(repo, params.data)
    for trained, evaluated in cells(params):
        source = paths.evaluation(trained, evaluated)
        target = destination / source.name
        target.mkdir(parents=True, exist_ok=True)
        for name in CELL_FILES:
            if not (source / name).is_file():
                raise FileNotFoundError(f"{source / name} missing after the experiment {experiment}: "
                                        f"run `dvc exp run` again, or `dvc repro` to see why it was not written")
            shutil.copy2(source / name, target / name)


def is_done(folder: Path, overrides: tuple[str, ...]) -> bool:
    done = folder / DONE
    return done.is_file() and json.loads(done.read_text()).get("overrides") == list(overrides)


def git_commit(repo: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                          check=False).stdout.strip()


def run_study(repo: Path, runs: list[StudyRun], out_dir: Path, params_file: str = "params.yaml",
              keep_going: bool = False,
              collect_extra: Callable[[Path, Params, Path], None] | None = None) -> dict[str, Path | None]:
    """Run every run not yet collected (see the module docstring); returns key -> its folder, or None for a run
    that failed (only with keep_going: its failed.json is written and the study goes on; otherwise it raises)."""
    keys = [run.key for run in runs]
    if not runs or len(set(keys)) != len(keys):
        raise ValueError(f"a study needs at least one run and distinct run names, got {keys}")
    env = dict(os.environ)
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{repo / 'mlruns.db'}")  # the repository's own store
    params_path = repo / params_file
    starting_params = params_path.read_text()
    folders: dict[str, Path | None] = {}
    for run in runs:
        folder = out_dir / run.key
        if is_done(folder, run.overrides):
            folders[run.key] = folder  # collected by an earlier (possibly killed, possibly older-commit) study
            continue
        if params_path.read_text() != starting_params:
            params_path.write_text(starting_params)  # the previous experiment's -S values are not this run's
        name = unique_name(run.key, existing_experiments(repo))
        command = (["dvc", "exp", "run", "--name", name] + [arg for value in run.overrides for arg in ("-S", value)]
                   + list(run.targets))
        print(f"{run.key}: {' '.join(command)}", flush=True)
        record = {**run.record, "experiment": name, "overrides": list(run.overrides), "targets": list(run.targets),
                  "commit": git_commit(repo)}
        start = time.perf_counter()
        result = subprocess.run(command, cwd=repo, env=env)
        record["wall_seconds"] = round(time.perf_counter() - start, 1)
        try:
            if result.returncode != 0:
                raise RuntimeError(f"`{' '.join(command)}` failed (exit {result.returncode}); fix the error above "
                                   f"and re-run: runs already collected in {out_dir} are kept")
            params = load_params(params_path)  # the experiment's own values
            collect_cells(repo, params, folder, name)
            if collect_extra is not None:
                collect_extra(repo, params, folder)
        except (RuntimeError, OSError, ValueError) as error:
            if not keep_going:
                raise
            folder.mkdir(parents=True, exist_ok=True)
            (folder / FAILED).write_text(json.dumps({**record, "error": str(error)}, indent=2) + "\n")
            print(f"{run.key}: FAILED ({error}); going on with the next run", flush=True)
            folders[run.key] = None
            continue
        (folder / FAILED).unlink(missing_ok=True)
        (folder / DONE).write_text(json.dumps(record, indent=2) + "\n")
        folders[run.key] = folder
    return folders
