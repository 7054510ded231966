"""Markdown tables of the results report, from the flat metrics of each evaluation cell.

Paper column order: R@1, R@5, R@10, MdR, MnR for t2v, then for v2t. A re-ranked row shows
`mean ± std` over the DDIM draws (sample std), every row its bootstrap CI `[low, high]` when the cell has one;
differences to stage 1 (paired) and OOD-minus-ID shifts get their own tables; a missing value prints as n/a.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from diffusionret.evaluation.names import DIRECTIONS, FAITHFUL_SUFFIX, OOD_PREFIXES, POSTPROCESSES
from diffusionret.evaluation.names import ROWS as EVALUATED_ROWS
from diffusionret.evaluation.ood import OOD_SCORES
from diffusionret.report.paper import PAPER_SOURCE_NOTE, paper_rows

COLUMNS = (("R1", "R@1"), ("R5", "R@5"), ("R10", "R@10"), ("MdR", "MdR"), ("MnR", "MnR"))
DSL_MARK = "†"
POSTPROCESS_LABELS = {"qbnorm": "QB-Norm", "dsl": f"DSL {DSL_MARK}"}


def row_label(postprocess: str, reranked: bool) -> str:
    """The report's label of an evaluated row."""
    if postprocess == "none":
        return "+ diffusion re-ranking (DiffusionRet)" if reranked else "Stage 1 (contrastive)"
    return f"+ re-ranking + {POSTPROCESS_LABELS[postprocess]}" if reranked else \
        f"Stage 1 + {POSTPROCESS_LABELS[postprocess]}"


def _row_order(suffix: str) -> tuple[bool, int]:
    postprocess, reranked = EVALUATED_ROWS[suffix]
    return postprocess != "none" and not reranked, POSTPROCESSES.index(postprocess)


# (row suffix, label) of every evaluated row: cumulative rows first, then post-processing of stage 1 alone
ROWS = tuple((suffix, row_label(*EVALUATED_ROWS[suffix])) for suffix in sorted(EVALUATED_ROWS, key=_row_order))
OOD_ROWS = (("", "stage 1"), ("_rerank", "+ diffusion re-ranking"))
# direction -> (metric prefix of evaluate's OOD detection, columns shown per OOD cell)
DETECTION_COLUMNS = (("auroc", "AUROC"), ("aupr", "AUPR"), ("fpr95", "FPR95"))
OOD_DETECT = {"t2v": (OOD_PREFIXES["t2v"], DETECTION_COLUMNS + (("aurc", "AURC"),)),
              "v2t": (OOD_PREFIXES["v2t"], DETECTION_COLUMNS)}


@dataclass
class CellResult:
    """What the report knows about one evaluation cell."""

    trained: str
    evaluated: str
    metrics: dict[str, float]  # flat, as in eval/<A>__<B>/metrics.json
    info: dict[str, Any] = field(default_factory=dict)  # eval/<A>__<B>/cell.json

    @property
    def ood(self) -> bool:
        return self.trained != self.evaluated


def format_value(metrics: dict[str, float | None], key: str) -> str:
    """`22.0`, `22.2 ± 0.3` when `<key>_std` exists, `... [19.5, 24.5]` when the bootstrap CI `<key>_ci_low/high`
    exists, or `n/a` when the key is missing."""
    value = metrics.get(key)
    if value is None:
        return "n/a"
    std = metrics.get(f"{key}_std")
    text = f"{value:.1f}" if std is None else f"{value:.1f} ± {std:.1f}"
    low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
    return text if low is None or high is None else f"{text} [{low:.1f}, {high:.1f}]"


def format_difference(metrics: dict[str, float | None], key: str, part: str = "_delta") -> str:
    """`+1.5 [-0.5, +3.0]` from `<key><part>` and its CI; bold when the CI excludes 0; `n/a` when missing."""
    value = metrics.get(key + part)
    if value is None:
        return "n/a"
    low, high = metrics.get(f"{key}{part}_ci_low"), metrics.get(f"{key}{part}_ci_high")
    if low is None or high is None:
        return f"{value:+.1f}"
    text = f"{value:+.1f} [{low:+.1f}, {high:+.1f}]"
    return f"**{text}**" if low > 0 or high < 0 else text


def difference_table(result: CellResult, part: str = "_delta") -> str:
    """Each comparison row minus the stage-1 row of its direction (`_delta`, paired bootstrap), or an OOD cell's
    stage-1 and re-ranked rows minus the in-distribution cell's (`_shift`); empty without such keys."""
    rows = [(suffix, label) for suffix, label in (ROWS if part == "_delta" else OOD_ROWS)
            if any(f"{d}{suffix}/R1{part}" in result.metrics for d in DIRECTIONS)]
    if not rows:
        return ""
    header = "| | " + " | ".join(f"{direction} {title}" for direction in DIRECTIONS for _, title in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (1 + len(DIRECTIONS) * len(COLUMNS))]
    for suffix, label in rows:
        cells = [format_difference(result.metrics, f"{direction}{suffix}/{name}", part) for direction in DIRECTIONS
                 for name, _ in COLUMNS]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines)


def difference_caption(result: CellResult, part: str = "_delta") -> str:
    """How the differences of a cell were bootstrapped (resamples, level, paired or not)."""
    boot = result.info.get("bootstrap", {})
    level = f"{100 * boot.get('level', 0.95):.0f}%"
    resamples = boot.get("resamples", "?")
    if part == "_delta":
        return (f"_Row minus stage 1 of the same direction (R@K in points; MdR/MnR in ranks, lower is better), with "
                f"the {level} paired bootstrap CI over queries ({resamples} resamples, the same resampled queries for "
                f"both rows); bold: the CI excludes 0._")
    paired = {d: result.metrics.get(f"bootstrap/shift_paired_{d}") for d in DIRECTIONS}
    how = ", ".join(f"{d}: {'paired' if value else 'unpaired (different queries: independent two-sample bootstrap)'}"
                    for d, value in paired.items() if value is not None)
    return (f"_This cell minus the in-distribution cell `{result.trained} → {result.trained}` (same model, its own "
            f"test set), {level} CI over queries, {resamples} resamples; {how}; bold: the CI excludes 0._")


def _table_row(label: str, metrics: dict[str, float | None], prefixes: dict[str, str]) -> str:
    """One markdown row: label, then the five columns of each direction (prefixes: direction -> prefix)."""
    cells = [format_value(metrics, f"{prefixes[direction]}/{name}") for direction in DIRECTIONS
             for name, _ in COLUMNS]
    return "| " + " | ".join([label, *cells]) + " |"


def cell_table(result: CellResult) -> str:
    """The paper-style table of one cell: our rows, released-grouping rows if any, chance, paper rows."""
    header = "| | " + " | ".join(f"{direction} {title}" for direction in DIRECTIONS for _, title in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (1 + len(DIRECTIONS) * len(COLUMNS))]
    for suffix, label in ROWS:
        lines.append(_table_row(label, result.metrics, {d: d + suffix for d in DIRECTIONS}))
    for suffix, label in ROWS:
        if f"t2v{suffix}{FAITHFUL_SUFFIX}/R1" in result.metrics:
            lines.append(_table_row(f"{label} [released MSVD grouping]", result.metrics,
                                    {d: d + suffix + FAITHFUL_SUFFIX for d in DIRECTIONS}))
    lines.append(_table_row("Chance (random ranking)", result.metrics, {d: "chance" for d in DIRECTIONS}))
    if not result.ood:  # the paper's numbers are in-domain
        for label, numbers in paper_rows(result.info.get("source", "")):
            lines.append(_table_row(label, numbers, {d: d for d in DIRECTIONS}))
    return "\n".join(lines)


def cell_caption(result: CellResult) -> str:
    """One line under a cell's table: sizes, draws, bank and selection of that cell."""
    info = result.info
    draws = info.get("num_samples", 1)
    parts = [f"{info.get('num_queries', '?')} test captions x {info.get('num_videos', '?')} videos",
             f"re-ranked rows: mean ± sample std over {draws} DDIM draw(s), seeds {info.get('seeds', '?')}",
             f"QB-Norm bank: {info.get('bank', {}).get('captions', '?')} training captions / "
             f"{info.get('bank', {}).get('videos', '?')} training videos of `{result.trained}`",
             "checkpoints selected on the TEST split (official protocol)" if info.get("selection") == "test"
             else "checkpoints selected on the validation split"]
    if info.get("faithful_msvd_grouping") and not info.get("faithful_v2t"):
        parts.append("released grouping: v2t n/a (it leaves a video without captions)")
    return "_" + "; ".join(parts) + "._"


def cell_text_note(result: CellResult) -> str:
    """One line under a cell's table: test captions max_words cut (exact, model's tokenizer) and exact ties."""
    m, parts = result.metrics, []
    if "captions/test/truncated" in m:
        cut = int(m["captions/test/truncated"])
        parts.append(f"{cut} of {int(m['captions/test/captions'])} test captions cut at max_words "
                     f"{int(m['captions/test/max_words'])}" + (f" (up to {int(m['captions/test/max_excess'])}, mean "
                     f"{m['captions/test/mean_excess']:.1f} tokens lost)" if cut else "") +
                     f"; longest {int(m['captions/test/longest'])} tokens with bos/eos")
    for what, label in (("score_rows", "stage-1 score row"), ("sentence", "sentence vector")):
        if f"ties/{what}/tied_captions" in m:
            tied = int(m[f"ties/{what}/tied_captions"])
            parts.append(f"{tied} captions share their {label} with a different caption" +
                         (f" (largest group {int(m[f'ties/{what}/largest_group'])})" if tied else ""))
    return "_Captions: " + "; ".join(parts) + "._" if parts else ""


def ood_grid(results: list[CellResult], trained: list[str], evaluated: list[str], suffix: str) -> str:
    """Train x eval grid of t2v R@1 for one row (suffix ''=stage 1, '_rerank'), chance in the last row."""
    by_cell = {(r.trained, r.evaluated): r for r in results}
    lines = ["| trained \\ evaluated | " + " | ".join(evaluated) + " |", "|---|" + "---|" * len(evaluated)]
    for source in trained:
        cells = []
        for target in evaluated:
            result = by_cell.get((source, target))
            text = "n/a" if result is None else format_value(result.metrics, f"t2v{suffix}/R1")
            cells.append(f"{text} (ID)" if source == target else text)
        lines.append(f"| {source} | " + " | ".join(cells) + " |")
    chance = []
    for target in evaluated:
        found = next((r for r in results if r.evaluated == target), None)
        chance.append("n/a" if found is None else format_value(found.metrics, "chance/R1"))
    lines.append("| chance | " + " | ".join(chance) + " |")
    return "\n".join(lines)


def ood_scores_of(results: list[CellResult], prefix: str) -> list[str]:
    """Score names with detection metrics under `prefix` in any cell, in OOD_SCORES order (unknown ones last)."""
    found = {key.split("/")[1] for r in results for key in r.metrics
             if key.startswith(f"{prefix}/") and key.endswith("/auroc")}
    return [name for name in OOD_SCORES if name in found] + sorted(found - set(OOD_SCORES))


def ood_detection_table(results: list[CellResult], direction: str) -> str:
    """Rows: OOD scores; columns: AUROC / AUPR / FPR95 (/ AURC for t2v) of each OOD cell; best AUROC in bold."""
    prefix, columns = OOD_DETECT[direction]
    cells = [r for r in results if r.ood and any(key.startswith(f"{prefix}/") for key in r.metrics)]
    names = ood_scores_of(cells, prefix)
    if not cells or not names:
        return ""
    header = "| score | source | " + " | ".join(f"{r.trained} → {r.evaluated} {title}" for r in cells
                                              for _, title in columns) + " |"
    lines = [header, "|---|---|" + "---|" * (len(cells) * len(columns))]
    best = {id(r): max((r.metrics.get(f"{prefix}/{name}/auroc", float("-inf")) for name in names)) for r in cells}
    for name in names:
        values = []
        for r in cells:
            for metric, _ in columns:
                value = r.metrics.get(f"{prefix}/{name}/{metric}")
                text = "n/a" if value is None else f"{value:.3f}"
                values.append(f"**{text}**" if metric == "auroc" and value is not None and value == best[id(r)]
                              else text)
        source = OOD_SCORES[name].source if name in OOD_SCORES else "?"
        lines.append(f"| {name} | {source} | " + " | ".join(values) + " |")
    if direction == "t2v":
        reference = []
        for r in cells:
            for metric, _ in columns:
                value = r.metrics.get(f"{prefix}/aurc_random") if metric == "aurc" else None
                reference.append("" if metric != "aurc" else "n/a" if value is None else f"{value:.3f}")
        lines.append("| abstain at random | reference | " + " | ".join(reference) + " |")
    return "\n".join(lines)


def ood_detection_section(results: list[CellResult], figures: dict[str, list[str]]) -> list[str]:
    """The markdown lines of the OOD-query-detection section (empty when no cell has detection metrics)."""
    tables = {direction: ood_detection_table(results, direction) for direction in OOD_DETECT}
    if not any(tables.values()):
        return []
    lines = ["## Out-of-distribution query detection", "",
             "Can a score flag a query from another distribution? In-distribution queries: the trained benchmark's "
             "test captions (t2v) / videos (v2t); out-of-distribution queries: the evaluated benchmark's, all run "
             "against the TRAINED benchmark's test gallery and re-ranked with the same DDIM seeds. Every score is "
             "oriented so that higher = more in-distribution; ID is the positive class. AUROC 0.5 = chance; "
             "FPR95 = share of OOD queries accepted at the threshold keeping 95% of ID queries (lower is better). "
             "AURC (lower is better): area under the risk-coverage curve of re-ranked t2v R@1 when the least "
             "confident queries (pooled ID + OOD, an OOD query never being right) are abstained from. "
             "stage1 scores use the stage-1 similarities; generator scores use softmax(x0_hat) over the "
             "re-ranked top-k, averaged over the DDIM draws (spread: std over draws). Bold: best AUROC of a cell.",
             ""]
    for name, score in OOD_SCORES.items():
        lines.append(f"- `{name}` ({score.source}): {score.description}")
    lines.append("")
    for direction, table in tables.items():
        if table:
            lines += [f"{direction}:", "", table, ""]
    for r in results:
        lines += [f"![{path}]({path})" for path in figures.get(f"{r.trained}__{r.evaluated}_ood", [])]
    return lines + [""]


def difference_section(result: CellResult, part: str) -> list[str]:
    """A cell's difference table with its title and caption (no lines without differences)."""
    table = difference_table(result, part)
    if not table:
        return []
    title = "Differences to stage 1" if part == "_delta" else "Shift: this cell minus in-distribution"
    return [f"{title}:", "", table, "", difference_caption(result, part), ""]


def rerank_verdict(result: CellResult) -> str:
    """One plain sentence per direction: does diffusion re-ranking change R@1 measurably in this cell?"""
    parts = []
    for direction in DIRECTIONS:
        key = f"{direction}_rerank/R1"
        value = result.metrics.get(key + "_delta")
        low, high = result.metrics.get(key + "_delta_ci_low"), result.metrics.get(key + "_delta_ci_high")
        if value is None or low is None or high is None:
            continue
        verdict = ("a gain: the interval is above 0" if low > 0 else "a loss: the interval is below 0" if high < 0
                   else "no measurable difference: the interval includes 0")
        parts.append(f"{direction} R@1 {result.metrics.get(direction + '/R1', float('nan')):.1f} → "
                     f"{result.metrics.get(key, float('nan')):.1f}, re-ranked minus stage 1 {value:+.1f} "
                     f"[{low:+.1f}, {high:+.1f}], {verdict}")
    return (f"- **{result.trained} → {result.evaluated}**: " + "; ".join(parts) + ".") if parts else ""


def results_markdown(results: list[CellResult], trained: list[str], evaluated: list[str],
                     figures: dict[str, list[str]]) -> str:
    """The whole reports/results.md; `figures` maps a section key (benchmark or cell name) to image paths."""
    selections = sorted({r.info.get("selection", "val") for r in results})
    lines = ["# Results", "",
             "Generated by the `report` stage (`dvc repro report`) from `eval/<trained>__<evaluated>/metrics.json`;"
             " do not edit by hand.", "",
             "- Metrics: R@K in percent, MdR/MnR = median/mean rank (1 = first). Ties are pessimistic: the ground "
             "truth ranks below every other candidate with the same score.",
             "- Multi-caption test sets: t2v ranks every caption against all videos; v2t ranks caption groups "
             "scored by the max over the group (CLIP4Clip convention), groups from explicit video ids.",
             "- Re-ranked rows: mean ± sample standard deviation over the DDIM draws (seeds eval.seed + i).",
             "- [low, high]: percentile-bootstrap confidence interval over videos (v2t: each video a query; t2v: "
             "videos resampled with all their captions, whose hits are correlated; "
             "eval.ci_level, eval.bootstrap_resamples). Re-ranked rows: R@K is the mean over queries of each "
             "query's hit rate over the draws, MnR of its mean rank, MdR the mean over draws of the median rank. "
             "Per-query ranks of every row and draw: `eval/<trained>__<evaluated>/ranks.npz`.",
             "- QB-Norm: dynamic inverted softmax with a querybank of the TRAINED benchmark's training captions "
             "(t2v) / videos (v2t) scored against the test gallery, never test queries; for re-ranked rows the "
             "bank is re-ranked with the same generator and seed.",
             f"- {DSL_MARK} DSL (dual softmax over the test queries) is transductive: every score depends on all "
             "test queries at once, so it does not apply to a single live query.",
             "- " + ("**Checkpoints selected on the TEST split (official protocol): these numbers are optimistic "
                     "and not comparable with held-out selection.**" if "test" in selections
                     else "Checkpoints (stage 1 and stage 2, raw or EMA) selected on the validation split, "
                          "never on test."),
             f"- {PAPER_SOURCE_NOTE}", ""]
    verdicts = [line for line in (rerank_verdict(result) for result in results) if line]
    if verdicts:
        lines += ["## Does diffusion re-ranking help?", "",
                  "Re-ranked minus stage-1 R@1 on the same queries, with its paired 95% bootstrap interval, one "
                  "training seed (`make seeds` gives the spread over seeds); the diagnostics below show why.", "",
                  *verdicts, ""]
    lines += ["## In-distribution", ""]
    for result in results:
        if result.ood:
            continue
        lines += [f"### {result.evaluated}", "", cell_table(result), "", cell_caption(result), ""]
        lines += [cell_text_note(result), ""] if cell_text_note(result) else []
        lines += difference_section(result, "_delta")
        lines += [f"![{path}]({path})" for path in figures.get(f"{result.trained}__{result.evaluated}", [])] + [""]
    lines += ["## Out-of-distribution", "",
              "A model trained on one benchmark (rows), evaluated on another's test set with that benchmark's "
              "max_words / max_frames (columns); (ID) marks in-distribution cells.", ""]
    for suffix, label in OOD_ROWS:
        lines += [f"t2v R@1, {label}:", "", ood_grid(results, trained, evaluated, suffix), ""]
    lines += ood_detection_section(results, figures)
    for result in results:
        if not result.ood:
            continue
        lines += [f"### {result.trained} → {result.evaluated}", "", cell_table(result), "",
                  cell_caption(result), ""]
        lines += [cell_text_note(result), ""] if cell_text_note(result) else []
        lines += difference_section(result, "_delta") + difference_section(result, "_shift")
        lines += [f"![{path}]({path})" for path in figures.get(f"{result.trained}__{result.evaluated}", [])] + [""]
    lines += ["## Training curves", ""]
    for source in trained:
        lines += [f"![{path}]({path})" for path in figures.get(source, [])]
    return "\n".join(lines).rstrip() + "\n"
