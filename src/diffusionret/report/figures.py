"""PNG figures of the report (matplotlib's object API with the Agg canvas: no pyplot state, no display).

- loss curves of both training stages of a trained benchmark (from plots/<A>/{disc,gen}_loss.csv);
- recall@K curves of every row of a cell (from eval/<A>__<B>/curves.npz, R@K for K = 1..V per draw);
- a rank histogram of a cell, derived from the same curves: P(rank in [a, b)) = R@(b-1) - R@(a-1);
- the in- vs out-of-distribution histograms of an OOD cell's per-query scores.

Every axis is labelled, tick labels are plain numbers (no offset notation such as "+1e-3" that would hide
where a value sits) and at least TICK_SIZE points.
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
TICK_SIZE = 9
UNIFORM_REFERENCE = {  # generator score -> its value for a uniform distribution over k candidates
    "gen_max_prob": (lambda k: 1.0 / k, "uniform 1/k"),
    "gen_neg_entropy": (lambda k: -float(np.log(k)), "uniform -log k"),
}


def _finish(axis) -> None:
    """Readable, plain tick labels (ScalarFormatter without offset or scientific notation) and a light grid."""
    from matplotlib.ticker import ScalarFormatter

    axis.tick_params(labelsize=TICK_SIZE)
    for which in (axis.xaxis, axis.yaxis):
        formatter = which.get_major_formatter()
        if isinstance(formatter, ScalarFormatter):
            formatter.set_useOffset(False)
            formatter.set_scientific(False)


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
    right.set(title=f"{benchmark}: stage 2 (generation)", xlabel="step", ylabel="loss (mean over each log window)")
    left.set_ylabel("loss/contrastive (mean over each log window)")
    right.legend(fontsize=8)
    for axis in (left, right):
        axis.grid(alpha=0.3)
        _finish(axis)
    return _save(figure, path)


def recall_figure(curves: dict[str, np.ndarray], title: str, path: Path) -> Path:
    """Top: R@K against K (log axis) for every row, both directions; the band spans mean ± std over draws.
    Bottom: ΔR@K, each row minus stage 1 (percentage points), where the rows' differences are visible."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 7.4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(2, 2, squeeze=False, sharex="col", height_ratios=(3, 2))
    for column, direction in enumerate(DIRECTIONS):
        axis, delta = grid[0, column], grid[1, column]
        base = curves[direction].mean(axis=0)  # stage 1 is deterministic: one draw
        ks = np.arange(1, len(base) + 1)
        for suffix, (label, style) in ROW_STYLES.items():
            draws = curves.get(direction + suffix)
            if draws is None:
                continue
            mean = draws.mean(axis=0)
            line, = axis.plot(ks, mean, style, label=label)
            spread = draws.std(axis=0, ddof=1) if len(draws) > 1 else None
            if spread is not None:
                axis.fill_between(ks, mean - spread, mean + spread, color=line.get_color(), alpha=0.2)
            if suffix:
                delta.plot(ks, mean - base, style, color=line.get_color(), label=label)
                if spread is not None:
                    delta.fill_between(ks, mean - base - spread, mean - base + spread, color=line.get_color(),
                                       alpha=0.2)
        axis.plot(ks, 100.0 * ks / len(ks), color="grey", linewidth=1, label="chance")
        delta.axhline(0.0, color="tab:blue", linewidth=1, label="stage 1")
        axis.set(xscale="log", xlabel="K", ylabel="R@K (%)", title=f"{title}: {direction}", ylim=(0, 100.5))
        delta.set(xscale="log", xlabel="K (candidates retrieved)", ylabel="ΔR@K vs stage 1 (points)")
        ticks = [t for t in (d * 10 ** e for e in range(7) for d in (1, 2, 5)) if t < 0.75 * len(ks)] + [len(ks)]
        for each in (axis, delta):
            each.grid(alpha=0.3, which="both")
            each.set_xticks(ticks, [str(t) for t in ticks])
            each.minorticks_off()
            _finish(each)
    grid[0, -1].legend(fontsize=8, loc="lower right")
    grid[1, -1].text(0.01, 0.02, "bands: ± std over DDIM draws", transform=grid[1, -1].transAxes, fontsize=8,
                     color="#555")
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
    figure, axes = _new_figure(11, 4, 2)
    for axis, direction in zip(axes, DIRECTIONS):
        num_candidates = curves[direction].shape[1]
        edges = rank_bins(num_candidates)
        positions = np.arange(len(edges) - 1)
        for offset, (suffix, label) in zip((-0.2, 0.2), (("", "stage 1"), ("_rerank", "+ re-ranking"))):
            share = rank_histogram(curves[direction + suffix].mean(axis=0), edges)
            axis.bar(positions + offset, share, width=0.4, label=label)
        names = [str(lo) if hi - lo == 1 else f"{lo}-{hi - 1}" for lo, hi in zip(edges[:-1], edges[1:])]
        axis.set_xticks(positions, names, rotation=45)
        axis.set(xlabel="rank of the ground truth", ylabel="% of queries", title=f"{title}: {direction}")
        axis.grid(alpha=0.3, axis="y")
        _finish(axis)
    axes[-1].legend(fontsize=9)
    return _save(figure, path)


def ood_histogram_figure(scores: dict[str, dict[str, np.ndarray]], title: str, path: Path,
                         metrics: dict[str, float] | None = None, num_candidates: int | None = None) -> Path:
    """In- vs out-of-distribution histograms of every OOD score (scores: name -> {"id": (Q,), "ood": (Q',)}).

    `num_candidates` (the re-ranked top-k) draws the uniform distribution's value on the generator's panels:
    a generator that learned nothing gives max probability 1/k and entropy log k.
    """
    names = list(scores)
    columns = min(4, len(names))
    rows = -(-len(names) // columns)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(3.6 * columns, 3.0 * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis, name in zip(axes, names):
        both = np.concatenate([scores[name]["id"], scores[name]["ood"]])
        low, high = float(both.min()), float(both.max())
        reference = UNIFORM_REFERENCE.get(name) if num_candidates else None
        if reference is not None:  # keep the reference line inside the axis
            value = reference[0](num_candidates)
            low, high = min(low, value), max(high, value)
        bins = np.linspace(low, high if high > low else low + 1.0, 31)
        for side, label, colour in (("id", "in-distribution", "tab:blue"), ("ood", "out-of-distribution", "tab:red")):
            axis.hist(scores[name][side], bins=bins, alpha=0.5, color=colour, label=label, density=True)
        if reference is not None:
            axis.axvline(reference[0](num_candidates), color="black", linestyle="--", linewidth=1,
                         label=f"{reference[1]} (k = {num_candidates})")
            axis.legend(fontsize=7, loc="upper left")
        auroc = None if metrics is None else metrics.get(name)
        axis.set_title(name if auroc is None else f"{name} (AUROC {auroc:.2f})", fontsize=10)
        axis.set(xlabel=f"{name} score", ylabel="density")
        axis.xaxis.set_major_locator(MaxNLocator(nbins=4))  # plain labels of small ranges are long: fewer ticks
        _finish(axis)
    for axis in axes[len(names):]:
        axis.set_axis_off()
    axes[0].legend(fontsize=7)
    figure.suptitle(f"{title} (higher = more in-distribution)", fontsize=11)
    return _save(figure, path)
