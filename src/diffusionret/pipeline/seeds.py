"""`diffusionret seeds` (`make seeds SEEDS="0 1 2"`): the default pipeline trained and evaluated with N seeds, as
named DVC experiments run one after another (`dvc exp run -S seed=s -S train.seed=s -S eval.seed=...`), and a
table over the seeds.

What one seed changes: `seed`, `train.seed` (stage-1 initialisation and batches; stage 2 seeds its generator and
batches from it too) and `eval.seed` = s * eval.num_samples (the DDIM draws, disjoint between seeds). The data,
the QB-Norm bank subsample and the bootstrap indices stay fixed, so seeds differ only in training and sampling.

After each experiment the workspace holds its outputs (what `dvc exp run` does); its eval/<cell>/{metrics.json,
ranks.npz, cell.json} are copied to reports/seeds/seed-<s>/<cell>/ with a done.json naming the experiment, so a
killed run resumes at the first seed without one (the study machinery of pipeline/study.py, shared with
`diffusionret heads`). Then reports/seeds.md and reports/seeds.json hold, per cell:
mean ± std over seeds (sample std) of every headline metric and of each paired difference to stage 1, and the
POOLED paired CI of each difference: every seed's per-query differences together, resampled within each seed
(stratified by seed), the pooled statistic weighting seeds by their number of queries (equal here).
The MLflow runs of every stage carry a `seed` tag (train.seed), so the runs group by seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from diffusionret.config import Params, load_params
from diffusionret.evaluation.names import DIRECTIONS, HEADLINE_METRICS, ROWS, headline_keys
from diffusionret.evaluation.rows import query_clusters
from diffusionret.evaluation.uncertainty import (CI_HIGH, CI_LOW, DELTA, Bootstrap, metric_names,
                                                 stratified_paired_difference)
from diffusionret.pipeline.study import StudyRun, run_study, unique_name

COMPARISONS = tuple(suffix for suffix in ROWS if suffix)  # every row but stage 1 is compared with stage 1


def seed_overrides(seed: int, params: Params) -> list[str]:
    """The `-S` overrides of one seed: stage 1, stage 2 and the DDIM draws (disjoint draws between seeds)."""
    return [f"seed={seed}", f"train.seed={seed}", f"eval.seed={seed * params.eval.num_samples}"]


def experiment_name(seed: int, taken: set[str]) -> str:
    """`seed-<s>`, or `seed-<s>-r<n>` when a DVC experiment of that name exists (an earlier study's is kept)."""
    return unique_name(f"seed-{seed}", taken)


def run_seeds(repo: Path, seeds: list[int], out_dir: Path, extra: list[str] | None = None,
              params_file: str = "params.yaml") -> list[Path]:
    """Run one DVC experiment per seed (skipping seeds already collected with the same overrides); returns the
    per-seed folders in seed order."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
    base = load_params(repo / params_file)
    runs = [StudyRun(key=f"seed-{seed}", overrides=tuple(seed_overrides(seed, base) + list(extra or [])),
                     record={"seed": seed}) for seed in seeds]
    folders = run_study(repo, runs, out_dir, params_file)
    return [folders[run.key] for run in runs]


def load_seed(folder: Path) -> dict[str, dict]:
    """cell name -> {"metrics": flat metrics, "ranks": prefix -> (draws, queries), "info": cell.json}."""
    out = {}
    for cell_dir in sorted(path for path in folder.iterdir() if path.is_dir()):
        with np.load(cell_dir / "ranks.npz") as stored:
            ranks = {key: stored[key] for key in stored.files}
        out[cell_dir.name] = {"metrics": json.loads((cell_dir / "metrics.json").read_text()), "ranks": ranks,
                              "info": json.loads((cell_dir / "cell.json").read_text())}
    return out


def mean_std(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else float("nan"),
            "values": [float(v) for v in array]}


def summarise(runs: dict[int, dict[str, dict]], boot: Bootstrap) -> dict:
    """Per cell: headline metrics and differences to stage 1 over seeds (mean, std, per-seed values) and the pooled,
    seed-stratified paired CI of each difference."""
    seeds = sorted(runs)
    shared = set.intersection(*(set(runs[seed]) for seed in seeds))
    summary = {"seeds": seeds, "bootstrap": {"resamples": boot.resamples, "seed": boot.seed, "level": boot.level},
               "cells": {}}
    for cell in sorted(shared):
        per_seed = [runs[seed][cell] for seed in seeds]
        headline = {key: mean_std([run["metrics"][key] for run in per_seed]) for key in headline_keys()}
        differences = {}
        for direction in DIRECTIONS:
            for suffix in COMPARISONS:
                prefix = direction + suffix
                if not all(prefix in run["ranks"] for run in per_seed):
                    continue
                pooled = stratified_paired_difference(
                    [run["ranks"][prefix] for run in per_seed], [run["ranks"][direction] for run in per_seed], boot,
                    clusters=[query_clusters(prefix, run["ranks"]["caption_video"]) for run in per_seed])
                for name in metric_names():
                    if name not in HEADLINE_METRICS:
                        continue
                    values = [run["metrics"][f"{prefix}/{name}{DELTA}"] for run in per_seed]
                    differences[f"{prefix}/{name}{DELTA}"] = {
                        **mean_std(values), "pooled": pooled[name + DELTA],
                        "pooled_ci_low": pooled[name + DELTA + CI_LOW],
                        "pooled_ci_high": pooled[name + DELTA + CI_HIGH]}
        summary["cells"][cell] = {"headline": headline, "differences": differences,
                                  "queries": {d: int(per_seed[0]["ranks"][d].shape[1]) for d in DIRECTIONS}}
    return summary


def _cell(stat: dict, signed: bool = False) -> str:
    fmt = "{:+.1f}" if signed else "{:.1f}"
    std = "n/a" if np.isnan(stat["std"]) else f"{stat['std']:.1f}"
    return f"{fmt.format(stat['mean'])} ± {std}"


def seeds_markdown(summary: dict) -> str:
    """reports/seeds.md: one section per cell, a headline table and a difference table."""
    level = f"{100 * summary['bootstrap']['level']:.0f}%"
    lines = ["# Seeds", "",
             f"Generated by `diffusionret seeds` (`make seeds`) over seeds {summary['seeds']}: each seed is a DVC "
             "experiment `seed-<s>` (seed, train.seed and eval.seed changed; data fixed). Mean ± sample std over "
             f"seeds. Pooled CI: {level} paired bootstrap of each difference with the per-query differences of all "
             f"seeds pooled, resampled within each seed ({summary['bootstrap']['resamples']} resamples); bold when "
             "it excludes 0. R@K in points, MdR/MnR in ranks (lower is better). Per-seed files: "
             "`reports/seeds/seed-<s>/<cell>/` (metrics.json, ranks.npz, cell.json).", ""]
    for cell, found in summary["cells"].items():
        lines += [f"## {cell.replace('__', ' → ')}", "",
                  f"_{found['queries']['t2v']} t2v queries (captions), {found['queries']['v2t']} v2t queries "
                  f"(videos) per seed._", "",
                  "| row | " + " | ".join(HEADLINE_METRICS) + " |", "|---|" + "---|" * len(HEADLINE_METRICS)]
        rows = sorted({key.split("/")[0] for key in found["headline"]}, key=lambda row: (row[:3], len(row)))
        for row in rows:
            lines.append(f"| {row} | " + " | ".join(_cell(found["headline"][f"{row}/{name}"])
                                                    for name in HEADLINE_METRICS) + " |")
        lines += ["", "| difference to stage 1 | " + " | ".join(HEADLINE_METRICS) + " |",
                  "|---|" + "---|" * len(HEADLINE_METRICS)]
        prefixes = sorted({key.split("/")[0] for key in found["differences"]}, key=lambda p: (p[:3], len(p)))
        for prefix in prefixes:
            values = []
            for name in HEADLINE_METRICS:
                stat = found["differences"][f"{prefix}/{name}{DELTA}"]
                ci = f"[{stat['pooled_ci_low']:+.1f}, {stat['pooled_ci_high']:+.1f}]"
                if stat["pooled_ci_low"] > 0 or stat["pooled_ci_high"] < 0:
                    ci = f"**{ci}**"
                values.append(f"{_cell(stat, signed=True)} {ci}")
            lines.append(f"| {prefix} − {prefix[:3]} | " + " | ".join(values) + " |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def write_summary(folders: dict[int, Path], boot: Bootstrap, out_dir: Path) -> dict:
    """reports/seeds.md and reports/seeds.json from the per-seed folders."""
    summary = summarise({seed: load_seed(folder) for seed, folder in folders.items()}, boot)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "seeds.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    (out_dir / "seeds.md").write_text(seeds_markdown(summary))
    return summary
