"""`report` stage: every evaluation cell -> reports/results.md and reports/figures/*.png.

Reads eval/<A>__<B>/{metrics.json, cell.json, curves.npz} for A in train.benchmarks, B in eval.benchmarks,
and plots/<A>/{disc,gen}_loss.csv. Writes one paper-style table per in-distribution benchmark, the OOD
grid, the OOD-query-detection tables and a table per OOD cell, the figures (DVC image plots: recall, ranks,
and for an OOD cell the in- vs out-of-distribution score histograms from scores.npz), and attaches the
report and the figures of each trained benchmark to its stage-1 MLflow run (artifact folder `report/`), or, in a
DVC experiment that did not train that model, to the experiment's own evaluation group run under it;
the histograms also go to the cell's postprocess=none child run (artifact folder `ood_detect/`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from diffusionret import tracking
from diffusionret.config import Params
from diffusionret.pipeline.paths import Paths
from diffusionret.report.figures import (loss_figure, ood_histogram_figure, rank_figure, read_loss_csv,
                                         recall_figure)
from diffusionret.report.diagnostics import diagnostics_section
from diffusionret.report.tables import OOD_DETECT, CellResult, results_markdown

OOD_KEY = "ood__"  # per-query OOD scores in scores.npz: ood__<direction>__<id|ood>__<score>


def load_cell(paths: Paths, trained: str, evaluated: str) -> tuple[CellResult, dict[str, np.ndarray]]:
    """The metrics, description and R@K curves of one cell, with the stage to run when one is missing."""
    cell_dir = paths.evaluation(trained, evaluated)
    files = {name: cell_dir / name for name in ("metrics.json", "cell.json", "curves.npz")}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} missing: run `dvc repro evaluate@{trained}-{evaluated}`")
    result = CellResult(trained, evaluated, json.loads(files["metrics.json"].read_text()),
                        json.loads(files["cell.json"].read_text()))
    with np.load(files["curves.npz"]) as stored:
        curves = {name: stored[name] for name in stored.files}
    return result, curves


def load_diagnostics(paths: Paths, trained: str, evaluated: str) -> dict | None:
    """eval/<A>__<B>/diagnostics.json of the `diagnose` stage, None when it has not been written."""
    path = paths.evaluation(trained, evaluated) / "diagnostics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def load_ood_scores(paths: Paths, trained: str, evaluated: str) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """direction -> score -> {"id", "ood"} per-query OOD scores of a cell (empty when it has none)."""
    path = paths.evaluation(trained, evaluated) / "scores.npz"
    if not path.is_file():
        return {}
    out: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    with np.load(path) as stored:
        for key in stored.files:
            parts = key.split("__")
            if key.startswith(OOD_KEY) and len(parts) == 4:
                _, direction, side, name = parts
                out.setdefault(direction, {}).setdefault(name, {})[side] = stored[key]
    return out


def ood_figures(result: CellResult, paths: Paths, figures_dir: Path) -> list[Path]:
    """The in- vs out-of-distribution histograms of a cell's OOD scores, one PNG per direction."""
    found = []
    for direction, scores in load_ood_scores(paths, result.trained, result.evaluated).items():
        prefix = OOD_DETECT[direction][0]
        auroc = {name: result.metrics.get(f"{prefix}/{name}/auroc") for name in scores}
        key = f"{result.trained}__{result.evaluated}"
        top_k = min(int(result.info["rerank"]["k"]), int(result.info["num_videos"]))  # what the generator re-ranks
        found.append(ood_histogram_figure(scores, f"{result.trained} → {result.evaluated}: {direction} queries",
                                          figures_dir / f"{key}_ood_{direction}.png", auroc, num_candidates=top_k))
    return found


def write_report(params: Params, paths: Paths, out_dir: Path) -> tuple[Path, list[CellResult], dict[str, list[Path]]]:
    """Write results.md and the figures under out_dir; returns the markdown path, the cells and figures by key."""
    trained, evaluated = list(params.train.benchmarks), list(params.eval.benchmarks)
    cells = {(source, target): load_cell(paths, source, target) for source in trained for target in evaluated}
    losses = {source: (read_loss_csv(paths.plots(source) / "disc_loss.csv"),
                       read_loss_csv(paths.plots(source) / "gen_loss.csv")) for source in trained}
    figures_dir = out_dir / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    for stale in figures_dir.glob("*.png"):  # a figure of a cell no longer in the grid must not linger
        stale.unlink()
    results, figures = [], {}
    for source in trained:
        figures[source] = [loss_figure(*losses[source], source, figures_dir / f"{source}_losses.png")]
        for target in evaluated:
            result, curves = cells[(source, target)]
            results.append(result)
            key, title = f"{source}__{target}", f"{source} → {target}"
            figures[key] = [recall_figure(curves, title, figures_dir / f"{key}_recall.png"),
                            rank_figure(curves, title, figures_dir / f"{key}_ranks.png")]
            if result.ood:
                figures[f"{key}_ood"] = ood_figures(result, paths, figures_dir)
    relative = {key: [str(path.relative_to(out_dir)) for path in found] for key, found in figures.items()}
    markdown = out_dir / "results.md"
    diagnostics = {f"{source} → {target}": load_diagnostics(paths, source, target)
                   for source in trained for target in evaluated}
    markdown.write_text(results_markdown(results, trained, evaluated, relative) + "\n"
                        + diagnostics_section(diagnostics))
    return markdown, results, figures


def build_report(params: Params, paths: Paths, repo_root: Path) -> Path:
    """The stage: write reports/, then log it to the stage-1 MLflow run of each trained benchmark."""
    markdown, results, figures = write_report(params, paths, repo_root / "reports")
    tracking.configure(params.tracking.tracking_uri, params.tracking.artifact_root, repo_root)
    for source in params.train.benchmarks:
        # the stage-1 run, or this DVC experiment's evaluation group when it did not train the model
        run_id = tracking.evaluation_parent(next(r.info["parent_run"] for r in results if r.trained == source))
        own = [path for key, found in figures.items() if key == source or key.startswith(f"{source}__")
               for path in found]
        tracking.log_artifacts_to_run(run_id, [markdown], artifact_path="report")
        tracking.log_artifacts_to_run(run_id, own, artifact_path="report/figures")
    for result in results:  # the histograms also go to the cell's own child run (postprocess=none)
        child = result.info.get("mlflow_runs", {}).get("none")
        histograms = figures.get(f"{result.trained}__{result.evaluated}_ood", [])
        if child and histograms:
            tracking.log_artifacts_to_run(child, histograms, artifact_path="ood_detect")
    return markdown
