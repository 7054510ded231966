"""`diffusionret heads` (`make heads`): every similarity head trained and evaluated on the current params, each with
and without diffusion re-ranking, as one study (pipeline/study.py): a DVC experiment `<head>-seed-<s>` per head and
seed, collected into reports/heads/<head>-seed-<s>/, then reports/heads.md and reports/heads.json.

What a run changes: `model.head` (each head's own block in params.yaml holds its official defaults), the seed
overrides of `diffusionret seeds` when seeds are given (none by default: the params' own seeds), and the comparison
settings below, the same for every head:
- only the in-distribution cells (eval.benchmarks = train.benchmarks) and the stages up to `evaluate` (no diagnose
  or report), to fit the time budget;
- the re-ranking weight grid widened to alphas up to 30 (train_gen.rerank_alphas): re-ranking adds alpha * p
  (p a probability) to the stage-1 scores, and DiCoSA's scores are MLP-weighted sums of chunk cosines, not cosines,
  so their top-k spread differs from the cosine heads'; the (temperature, alpha) pair is chosen on val for each
  head (eval.rerank_from: val), and heads.md reports the chosen pair and each head's median top-k score range;
- a head whose preset variant in configs/presets/paper.yaml has a `postprocess` block (DiCoSA's official QB-Norm)
  gets it: its `_qbnorm` rows are that preset, reported beside the raw rows and never used for selection.
A run that fails is recorded (failed.json) and reported as failed; the study goes on with the next head.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from diffusionret.config import SIMILARITY_HEADS, Params, load_params
from diffusionret.evaluation.names import DIRECTIONS, HEADLINE_METRICS
from diffusionret.evaluation.uncertainty import CI_HIGH, CI_LOW, DELTA, Bootstrap
from diffusionret.pipeline.paths import Paths
from diffusionret.pipeline.seeds import load_seed, seed_overrides, summarise
from diffusionret.pipeline.study import DONE, FAILED, StudyRun, run_study
from diffusionret.presets import PRESETS_DIR, hydra_value, override_strings, variant_params

TARGETS = ("evaluate",)  # train_disc, extract, train_gen, evaluate (and anything upstream, e.g. an estimator)
RERANK_ALPHAS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
RUN_FILE = "run.json"  # per run: parameter counts, steps, steps/s, the chosen re-ranking pair, top-k score range
CURVES = ("disc_loss.csv", "gen_loss.csv")
ROW_LABELS = {"": "stage 1", "_rerank": "re-ranked"}
POST_ROWS = ("_qbnorm", "_rerank_qbnorm")


def comparison_overrides(params: Params) -> list[str]:
    """The settings every head's run shares (module docstring)."""
    return [f"eval.benchmarks={hydra_value(list(params.train.benchmarks))}",
            f"train_gen.rerank_alphas={hydra_value(list(RERANK_ALPHAS))}"]


def head_postprocess(head: str, params: Params, presets: Path = PRESETS_DIR) -> list[str]:
    """Every `postprocess.*` key: the head's preset variant's value (DiCoSA's QB-Norm) or else the params' own. All
    keys are spelled out for every head, so that no run depends on what the previous one left in params.yaml."""
    block = {**dataclasses.asdict(params.postprocess), **(variant_params(head, presets).get("postprocess") or {})}
    return override_strings({"postprocess": block})


def override_key(override: str) -> str:
    return override.split("=", 1)[0].strip()


def run_key(head: str, seed: int) -> str:
    return f"{head}-seed-{seed}"


def head_runs(heads: list[str], seeds: list[int] | None, params: Params, extra: list[str] | None = None,
              presets: Path = PRESETS_DIR) -> list[StudyRun]:
    """One run per head and seed, heads first; seeds None = the params' own seeds (no seed overrides)."""
    unknown = [head for head in heads if head not in SIMILARITY_HEADS]
    if unknown or not heads or len(set(heads)) != len(heads):
        raise ValueError(f"heads must be distinct registered heads ({', '.join(SIMILARITY_HEADS)}), got {heads}")
    if seeds is not None and (not seeds or len(set(seeds)) != len(seeds)):
        raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
    runs, extra = [], list(extra or [])
    own = {override_key(value) for value in extra}  # a key the user sets replaces the comparison's value
    for head in heads:
        for seed in (seeds if seeds is not None else [params.train.seed]):
            defaults = (comparison_overrides(params) + head_postprocess(head, params, presets))
            overrides = ([f"model.head={head}"] + (seed_overrides(seed, params) if seeds is not None else [])
                         + [value for value in defaults if override_key(value) not in own] + extra)
            runs.append(StudyRun(key=run_key(head, seed), overrides=tuple(overrides), targets=TARGETS,
                                 record={"head": head, "seed": seed}))
    return runs


def median_steps_per_second(curve: Path) -> float:
    """The median of the logged `perf/steps_per_second` windows (a window holding a validation is slower)."""
    if not curve.is_file():
        return float("nan")
    with curve.open() as handle:
        values = [float(row["perf/steps_per_second"]) for row in csv.DictReader(handle)
                  if row.get("perf/steps_per_second") not in (None, "")]
    return float(np.median(values)) if values else float("nan")


def topk_score_range(scores: np.ndarray, k: int) -> float:
    """Median over text queries of (top-1 - k-th) stage-1 score: the scale the re-ranking weight alpha meets."""
    k = min(k, scores.shape[1])
    top = -np.sort(-scores, axis=1)[:, :k]  # (Q, k)
    return float(np.median(top[:, 0] - top[:, -1]))


def collect_run(repo: Path, params: Params, folder: Path) -> None:
    """After a run: the loss curves and run.json (parameter counts as `diffusionret model-summary` counts them,
    steps and median steps/s of both stages, the re-ranking pair chosen on val, the top-k score range)."""
    from diffusionret.cli import head_counts, model_summary  # torch and the model stack, only here

    paths = Paths(repo, params.data)
    summary = model_summary(params)
    head = params.model.head
    out = {"head": head, "width": summary["width"],
           "parameters": {"extractor": summary["extractor_total"], "head": summary["modules"]["head"],
                          "generator": summary["generator_total"],
                          "head_vs_wti_at_vit_b32": head_counts(params.model, 512)[head]["vs_wti"]},
           "stages": {}}
    for trained in params.train.benchmarks:
        disc = json.loads((paths.disc_model(trained) / "model.json").read_text())
        gen = json.loads((paths.gen_model(trained) / "model.json").read_text())
        for name in CURVES:
            source = paths.plots(trained) / name
            if source.is_file():
                (folder / f"{trained}__{name}").write_bytes(source.read_bytes())
        with np.load(paths.evaluation(trained, trained) / "scores.npz") as stored:
            spread = topk_score_range(stored["stage1"], params.eval.rerank_k)
        out["stages"][trained] = {
            "disc": {"steps": disc.get("steps"), "selected": disc.get("selected"),
                     "steps_per_second": median_steps_per_second(paths.plots(trained) / "disc_loss.csv")},
            "gen": {"steps": params.train_gen.steps, "selected": gen.get("selected"),
                    "steps_per_second": median_steps_per_second(paths.plots(trained) / "gen_loss.csv")},
            "topk_score_range": spread}
    (folder / RUN_FILE).write_text(json.dumps(out, indent=2) + "\n")


def run_heads(repo: Path, heads: list[str], seeds: list[int] | None, out_dir: Path, extra: list[str] | None = None,
              params_file: str = "params.yaml") -> list[StudyRun]:
    """Run every head and seed not yet collected (a failed one is recorded and skipped); returns the runs."""
    runs = head_runs(heads, seeds, load_params(repo / params_file), extra, repo / PRESETS_DIR)
    run_study(repo, runs, out_dir, params_file, keep_going=True, collect_extra=collect_run)
    return runs


# ---------------------------------------------------------------------------------------------------- the table

def head_status(out_dir: Path, runs: list[StudyRun]) -> dict[str, dict]:
    """head -> {"seeds": {seed: folder} of collected runs, "failed": [failed.json records], "missing": [seeds]}."""
    found: dict[str, dict] = {}
    for run in runs:
        entry = found.setdefault(run.record["head"], {"seeds": {}, "failed": [], "missing": []})
        folder = out_dir / run.key
        done = folder / DONE
        if done.is_file() and json.loads(done.read_text()).get("overrides") == list(run.overrides):
            entry["seeds"][run.record["seed"]] = folder
        elif (folder / FAILED).is_file():
            entry["failed"].append(json.loads((folder / FAILED).read_text()))
        else:
            entry["missing"].append(run.record["seed"])
    return found


def _row_keys() -> list[str]:
    return [f"{direction}{suffix}/{name}" for direction in DIRECTIONS for suffix in (*ROW_LABELS, *POST_ROWS)
            for name in HEADLINE_METRICS]


def summarise_heads(out_dir: Path, runs: list[StudyRun], boot: Bootstrap) -> dict:
    """heads.json: per head its status, runs, parameter counts, steps and steps/s, and per cell every headline
    row with its CI (one seed) or mean ± std over seeds, and each re-ranked row's paired difference to stage 1
    with its CI (pooled over seeds when several)."""
    heads = {}
    for head, entry in head_status(out_dir, runs).items():
        record: dict = {"status": "done" if entry["seeds"] and not entry["failed"] and not entry["missing"]
                        else "failed" if entry["failed"] else "partial" if entry["seeds"] else "not run",
                        "seeds": sorted(entry["seeds"]), "failed": entry["failed"], "missing": entry["missing"]}
        if entry["seeds"]:
            folders = {seed: entry["seeds"][seed] for seed in sorted(entry["seeds"])}
            record["runs"] = {seed: {**json.loads((folder / DONE).read_text()),
                                     **json.loads((folder / RUN_FILE).read_text())}
                              for seed, folder in folders.items()}
            loaded = {seed: load_seed(folder) for seed, folder in folders.items()}
            over_seeds = summarise(loaded, boot) if len(loaded) > 1 else None
            record["cells"] = {}
            for cell in sorted(set.intersection(*(set(found) for found in loaded.values()))):
                metrics = {seed: found[cell]["metrics"] for seed, found in loaded.items()}
                rows = {}
                for key in _row_keys():
                    prefix = key.split("/")[0]
                    if not all(key in values for values in metrics.values()):
                        continue
                    if over_seeds is None:
                        values = next(iter(metrics.values()))
                        rows[key] = {"value": values[key], "ci_low": values[key + CI_LOW],
                                     "ci_high": values[key + CI_HIGH]}
                        if prefix[3:] != "":
                            rows[key + DELTA] = {"value": values[key + DELTA],
                                                 "ci_low": values[key + DELTA + CI_LOW],
                                                 "ci_high": values[key + DELTA + CI_HIGH]}
                    else:
                        stat = over_seeds["cells"][cell]["headline"].get(key)
                        values = [metrics[seed][key] for seed in sorted(metrics)]
                        rows[key] = stat or {"mean": float(np.mean(values)), "values": values,
                                             "std": float(np.std(values, ddof=1))}
                        if prefix[3:] != "":
                            rows[key + DELTA] = over_seeds["cells"][cell]["differences"][key + DELTA]
                record["cells"][cell] = {
                    "rows": rows, "queries": {direction: int(next(iter(loaded.values()))[cell]["ranks"][direction]
                                                             .shape[1]) for direction in DIRECTIONS},
                    "qbnorm": next(iter(loaded.values()))[cell]["info"].get("postprocess")}
        heads[head] = record
    return {"heads": heads, "order": list(heads),
            "bootstrap": {"resamples": boot.resamples, "seed": boot.seed, "level": boot.level},
            "overrides": {run.key: list(run.overrides) for run in runs}}


def _number(value: float, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def _stat(stat: dict, signed: bool = False) -> str:
    """`12.5 [10.1, 14.9]` (one seed) or `12.5 ± 0.7` (mean ± std over seeds; a difference adds its pooled CI);
    a difference's CI in bold when it excludes 0."""
    if "value" in stat:
        text, low, high = _number(stat["value"], signed), stat["ci_low"], stat["ci_high"]
    else:
        text = f"{_number(stat['mean'], signed)} ± {_number(stat['std'])}"
        if "pooled_ci_low" not in stat:
            return text
        low, high = stat["pooled_ci_low"], stat["pooled_ci_high"]
    ci = f"[{_number(low, signed)}, {_number(high, signed)}]"
    if signed and (low > 0 or high < 0):
        ci = f"**{ci}**"
    return f"{text} {ci}"


def _cost_row(head: str, record: dict) -> str:
    if not record.get("runs"):
        reason = "; ".join(f"seed {found.get('seed')}: {found.get('error', '')[:120]}" for found in record["failed"])
        return f"| {head} | {record['status']}{': ' + reason if reason else ''} |" + " |" * 9
    runs = list(record["runs"].values())
    first = runs[0]
    stages = [stage for run in runs for stage in run["stages"].values()]
    disc = np.median([stage["disc"]["steps_per_second"] for stage in stages])
    gen = np.median([stage["gen"]["steps_per_second"] for stage in stages])
    pairs = ", ".join(sorted({f"({(s['gen']['selected'] or {}).get('rerank', {}).get('temperature')}, "
                              f"{(s['gen']['selected'] or {}).get('rerank', {}).get('alpha')})" for s in stages}))
    spread = np.median([stage["topk_score_range"] for stage in stages])
    wall = np.mean([run["wall_seconds"] for run in runs]) / 60
    status = record["status"] + (f" ({len(record['failed'])} failed)" if record["failed"] else "")
    params = first["parameters"]
    steps = stages[0]
    return (f"| {head} | {status} | {params['extractor']:,} | {params['head']:,} | "
            f"{params['head_vs_wti_at_vit_b32']:+,} | {params['generator']:,} | "
            f"{steps['disc']['steps']} at {disc:.1f}/s | {steps['gen']['steps']} at {gen:.1f}/s | {pairs} | "
            f"{spread:.3f} | {wall:.1f} |")


def heads_markdown(summary: dict) -> str:
    """reports/heads.md: per cell a t2v and a v2t table (stage 1, re-ranked, their paired difference), the
    post-processed rows, then the cost table."""
    level = f"{100 * summary['bootstrap']['level']:.0f}%"
    heads = summary["heads"]
    seeds = sorted({seed for record in heads.values() for seed in record["seeds"]})
    several = any(len(record["seeds"]) > 1 for record in heads.values())
    lines = ["# Similarity heads, with and without diffusion re-ranking", "",
             f"Generated by `diffusionret heads` (`make heads`): one DVC experiment `<head>-seed-<s>` per head "
             f"and seed (seeds {seeds}), stage 1 trained with each head and stage 2 unchanged on top of it, "
             "evaluated on the in-distribution test set. " + _overrides_text(summary["overrides"]), "",
             (f"Mean ± sample std over seeds; a difference's {level} CI is the paired bootstrap with every seed's "
              "per-query differences pooled (resampled within each seed)." if several else
              f"One seed: each value with its {level} bootstrap CI over queries (t2v resamples videos with all "
              "their captions); each difference is paired (the same resampled queries for both rows).")
             + f" {summary['bootstrap']['resamples']} resamples; a difference's CI in bold when it excludes 0. "
             "R@K in points, MdR/MnR in ranks (lower is better). The re-ranking (temperature, alpha) of each head "
             "is chosen on val from the grid of train_gen.rerank_temperatures x train_gen.rerank_alphas. "
             "Per-run files: `reports/heads/<head>-seed-<s>/`.", ""]
    cells = sorted({cell for record in heads.values() for cell in record.get("cells", {})})
    for cell in cells:
        lines += [f"## {cell.replace('__', ' → ')}", ""]
        queries = next(record["cells"][cell]["queries"] for record in heads.values() if cell in record.get("cells", {}))
        for direction, title in (("t2v", "Text → video"), ("v2t", "Video → text")):
            lines += [f"### {title} ({queries[direction]} queries)", "",
                      "| head | row | " + " | ".join(HEADLINE_METRICS) + " |",
                      "|---|---|" + "---|" * len(HEADLINE_METRICS)]
            for head, record in heads.items():
                rows = record.get("cells", {}).get(cell, {}).get("rows")
                if not rows:
                    lines.append(f"| {head} | {record['status']} |" + " |" * len(HEADLINE_METRICS))
                    continue
                for suffix, label in ROW_LABELS.items():
                    lines.append(f"| {head} | {label} | " + " | ".join(
                        _stat(rows[f"{direction}{suffix}/{name}"]) for name in HEADLINE_METRICS) + " |")
                lines.append(f"| {head} | re-ranked − stage 1 | " + " | ".join(
                    _stat(rows[f"{direction}_rerank/{name}{DELTA}"], signed=True) for name in HEADLINE_METRICS) + " |")
            lines.append("")
        lines += ["### QB-Norm rows (post-processing: reported beside the raw rows, never used for selection)", "",
                  "| head | QB-Norm settings | t2v R@1 | t2v re-ranked R@1 | v2t R@1 | v2t re-ranked R@1 |",
                  "|---|---|---|---|---|---|"]
        for head, record in heads.items():
            found = record.get("cells", {}).get(cell)
            if not found:
                continue
            rows = found["rows"]
            lines.append(f"| {head} | {_qbnorm_settings(found.get('qbnorm'))} | " + " | ".join(
                _stat(rows[f"{direction}{suffix}/R1"]) for direction in DIRECTIONS for suffix in POST_ROWS) + " |")
        lines.append("")
    lines += ["## Parameters and cost", "",
              "Parameters of the extractor and head at this params' width, the head's change against `wti` at "
              "ViT-B/32 widths (as `diffusionret model-summary` counts them), training steps and the median of "
              "the logged steps/s windows of each stage (the machine's load included), the re-ranking pair chosen "
              "on val, the median over text queries of the stage-1 score range within the re-ranked top-k "
              "(top-1 minus k-th: what alpha is weighed against), and the wall time of the run.", "",
              "| head | status | extractor | head | head vs wti at ViT-B/32 | generator | stage-1 steps | "
              "stage-2 steps | re-rank (temperature, alpha) | top-k score range | minutes |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_cost_row(head, record) for head, record in heads.items()]
    return "\n".join(lines).rstrip() + "\n"


def _overrides_text(overrides: dict[str, list[str]]) -> str:
    """The `-S` values every run shares, then what each run adds."""
    shared = [value for value in next(iter(overrides.values())) if all(value in found for found in overrides.values())]
    own = {key: [value for value in found if value not in shared] for key, found in overrides.items()}
    return (f"Every run: `{' '.join(shared)}`. Per run: "
            + "; ".join(f"{key}: `{' '.join(values)}`" for key, values in own.items()) + ".")


def _qbnorm_settings(post: dict | None) -> str:
    if not post:
        return "n/a"
    t2v = f"beta {post.get('qbnorm_beta')}, theta {post.get('qbnorm_min_count')}"
    v2t_beta = post.get("qbnorm_beta_v2t") or post.get("qbnorm_beta")
    v2t_theta = post.get("qbnorm_min_count_v2t") or post.get("qbnorm_min_count")
    return f"t2v {t2v}; v2t beta {v2t_beta}, theta {v2t_theta}; bank {post.get('qbnorm_bank_size')}"


def write_heads_summary(out_dir: Path, runs: list[StudyRun], boot: Bootstrap) -> dict:
    """reports/heads.md and reports/heads.json from reports/heads/<head>-seed-<s>/."""
    summary = summarise_heads(out_dir / "heads", runs, boot)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "heads.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    (out_dir / "heads.md").write_text(heads_markdown(summary))
    return summary
