"""PNG figures of the report (matplotlib's object API with the Agg canvas: no pyplot state, no display).

- loss curves of both training stages of a trained benchmark (from plots/<A>/{disc,gen}_loss.csv);
- recall@K curves of every row of a cell (from eval/<A>__<B>/curves.npz, R@K for K = 1..V per draw);
- a rank histogram of a cell, derived from the same curves: P(rank in [a, b)) = R@(b-1) - R@(a-1).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

ROW_STYLES = {  # suffix -> (label, line style); DSL rows marked transductive
    "": ("stage 1", "-"), "_rerank": ("+ re-ranking", "-"), "_rerank_qbnorm": ("+ re-ranking + QB-Norm", "--"),
    "_rerank_dsl": ("+ re-ranking + DSL (transductive)", ":"), "_qbnorm": ("stage 1 + QB-Norm", "--"),
    "_dsl": ("stage 1 + DSL (transductive)", ":"),
}
DIRECTIONS = ("t2v", "v2t")


def _new_figure(width: float, height: float, columns: int):
    """A Figure with `columns` side-by-side axes, drawn by the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(1, columns, squeeze=False)[0]


def _save(figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", metadata={"Software": None})  # no version stamp: stable bytes
    return path


def read_loss_csv(path: Path) -> dict[str, np.ndarray]:
    """Columns of a training log CSV (step, loss/..., ...) as float arrays."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the training stage that writes it has not run (`dvc repro`)")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{path} has no rows; re-run the training stage that writes it")
    return {name: np.array([float(row[name]) if row[name] != "" else np.nan for row in rows])
            for name in rows[0]}


def loss_figure(disc: dict[str, np.ndarray], gen: dict[str, np.ndarray], benchmark: str, path: Path) -> Path:
    """Stage-1 contrastive loss and stage-2 generative loss (total and per direction) against the step."""
    figure, (left, right) = _new_figure(10, 3.6, 2)
    left.plot(disc["step"], disc["loss/contrastive"], color="tab:blue")
    left.set(title=f"{benchmark}: stage 1 (discrimination)", xlabel="step", ylabel="loss/contrastive")
    for name, style in (("loss/generative", "-"), ("loss/generative_t2v", "--"), ("loss/generative_v2t", ":")):
        if name in gen:
            right.plot(gen["step"], gen[name], style, label=name)
    right.set(title=f"{benchmark}: stage 2 (generation)", xlabel="step", ylabel="loss")
    right.legend(fontsize=8)
    for axis in (left, right):
        axis.grid(alpha=0.3)
    return _save(figure, path)


def recall_figure(curves: dict[str, np.ndarray], title: str, path: Path) -> Path:
    """R@K against K (log axis) for every row, both directions; the band spans mean ± std over draws."""
    figure, axes = _new_figure(11, 4, 2)
    for axis, direction in zip(axes, DIRECTIONS):
        for suffix, (label, style) in ROW_STYLES.items():
            draws = curves.get(direction + suffix)
            if draws is None:
                continue
            ks = np.arange(1, draws.shape[1] + 1)
            mean = draws.mean(axis=0)
            line, = axis.plot(ks, mean, style, label=label)
            if len(draws) > 1:
                spread = draws.std(axis=0, ddof=1)
                axis.fill_between(ks, mean - spread, mean + spread, color=line.get_color(), alpha=0.2)
        num_candidates = next(iter(curves.values())).shape[1]
        ks = np.arange(1, num_candidates + 1)
        axis.plot(ks, 100.0 * ks / num_candidates, color="grey", linewidth=1, label="chance")
        axis.set(xscale="log", xlabel="K", ylabel="R@K (%)", title=f"{title}: {direction}", ylim=(0, 100.5))
        axis.grid(alpha=0.3, which="both")
    axes[-1].legend(fontsize=7, loc="lower right")
    return _save(figure, path)


def rank_bins(num_candidates: int) -> np.ndarray:
    """Bin edges over 1-based ranks, 1-2-5 steps: ranks 1, 2, 3-5, 6-10, 11-20, 21-50, ... up to num_candidates."""
    edges, decade = [1], 1
    while True:
        for step in (1, 2, 5):
            if step * decade + 1 > num_candidates:
                return np.array(edges + [num_candidates + 1])
            edges.append(step * decade + 1)
        decade *= 10


def rank_histogram(curve: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Percent of queries with 1-based rank in [edges[i], edges[i+1]) from one R@K curve (R@1 .. R@V)."""
    cumulative = np.concatenate([[0.0], np.asarray(curve, dtype=np.float64)])  # cumulative[K] = R@K, R@0 = 0
    return cumulative[edges[1:] - 1] - cumulative[edges[:-1] - 1]


def rank_figure(curves: dict[str, np.ndarray], title: str, path: Path) -> Path:
    """Histogram of the ground truth's rank, stage 1 against + re-ranking (draw mean), both directions."""
    figure, axes = _new_figure(11, 3.6, 2)
    for axis, direction in zip(axes, DIRECTIONS):
        num_candidates = curves[direction].shape[1]
        edges = rank_bins(num_candidates)
        positions = np.arange(len(edges) - 1)
        for offset, (suffix, label) in zip((-0.2, 0.2), (("", "stage 1"), ("_rerank", "+ re-ranking"))):
            share = rank_histogram(curves[direction + suffix].mean(axis=0), edges)
            axis.bar(positions + offset, share, width=0.4, label=label)
        names = [str(lo) if hi - lo == 1 else f"{lo}-{hi - 1}" for lo, hi in zip(edges[:-1], edges[1:])]
        axis.set_xticks(positions, names, rotation=45, fontsize=7)
        axis.set(xlabel="rank of the ground truth", ylabel="% of queries", title=f"{title}: {direction}")
        axis.grid(alpha=0.3, axis="y")
    axes[-1].legend(fontsize=8)
    return _save(figure, path)


def ood_histogram_figure(scores: dict[str, dict[str, np.ndarray]], title: str, path: Path,
                         metrics: dict[str, float] | None = None) -> Path:
    """In- vs out-of-distribution histograms of every OOD score (scores: name -> {"id": (Q,), "ood": (Q',)})."""
    names = list(scores)
    columns = min(4, len(names))
    rows = -(-len(names) // columns)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(3.2 * columns, 2.6 * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis, name in zip(axes, names):
        both = np.concatenate([scores[name]["id"], scores[name]["ood"]])
        low, high = float(both.min()), float(both.max())
        bins = np.linspace(low, high if high > low else low + 1.0, 31)
        for side, label, colour in (("id", "in-distribution", "tab:blue"), ("ood", "out-of-distribution", "tab:red")):
            axis.hist(scores[name][side], bins=bins, alpha=0.5, color=colour, label=label, density=True)
        auroc = None if metrics is None else metrics.get(name)
        axis.set_title(name if auroc is None else f"{name} (AUROC {auroc:.2f})", fontsize=9)
        axis.tick_params(labelsize=7)
    for axis in axes[len(names):]:
        axis.set_axis_off()
    axes[0].legend(fontsize=7)
    figure.suptitle(f"{title} (higher = more in-distribution)", fontsize=10)
    return _save(figure, path)
