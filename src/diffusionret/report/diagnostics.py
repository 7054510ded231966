"""The report's "Diagnostics" section: eval/<A>__<B>/diagnostics.json of the synthetic cells, with chance levels."""

from __future__ import annotations

import math
from typing import Any

ATTRIBUTE_COLUMNS = (("colour", "colour"), ("shape", "shape"), ("motion", "motion"), ("colour_shape", "colour+shape"))
PROBE_FEATURES = (("frames_backbone", "frame features before the temporal module (concat. over frames)"),
                  ("frames", "cached frame features after the temporal module (concat. over frames)"),
                  ("sentence", "sentence vector"),
                  ("tokens_mean", "caption token features, mean over tokens"),
                  ("tokens_concat", "caption token features, concat. over positions"))
DIRECTIONS = ("t2v", "v2t")


def _number(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _range(metrics: dict, key: str, digits: int = 1) -> str:
    """`mean` or `mean (min–max)` over the DDIM draws."""
    text = _number(metrics.get(key), digits)
    if f"{key}_min" in metrics and metrics[f"{key}_min"] != metrics[f"{key}_max"]:
        text += f" ({_number(metrics[f'{key}_min'], digits)}–{_number(metrics[f'{key}_max'], digits)})"
    return text


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(row) + " |" for row in rows], ""]


def attribute_table(cells: list[tuple[str, dict]]) -> list[str]:
    rows = []
    for name, m in cells:
        for direction in DIRECTIONS:
            for prefix, label in ((direction, "stage 1"), (f"{direction}_rerank", "re-ranked")):
                rows.append([name, direction, label, *[
                    f"{_number(m.get(f'{prefix}/top1_{key}'))} ({_number(m.get(f'{direction}/top1_{key}_chance'))})"
                    for key, _ in ATTRIBUTE_COLUMNS]])
    return _table(["cell", "dir", "scores", *[label for _, label in ATTRIBUTE_COLUMNS]], rows)


def composition_table(cells: list[tuple[str, dict]], k: dict[str, int]) -> list[str]:
    rows = []
    for name, m in cells:
        for direction in DIRECTIONS:
            p = f"{direction}/"
            rows.append([name, direction, str(k[name]), _number(m.get(p + "topk_same_colour")),
                         f"{_number(m.get(p + 'topk_same_colour_shape'))} "
                         f"({_number(m.get(p + 'topk_colour_shape_coverage'))}%)",
                         _number(m.get(p + "true_in_topk")),
                         f"{_number(m.get(p + 'group_rank'), 2)} ({_number(m.get(p + 'group_rank_random'), 2)})",
                         f"{_number(m.get(f'{direction}_rerank/group_rank'), 2)}",
                         _number(m.get(p + "oracle_colour_shape_R1")), _number(m.get(p + "random_motion_R1"))])
    return _table(["cell", "dir", "k", "same colour in top-k", "same colour+shape (% of gallery's)",
                   "true in top-k %", "true's rank in its colour+shape group, stage 1 (random)",
                   "… re-ranked", "R@1 if colour+shape were perfect (stage-1 order inside)",
                   "R@1 expected with perfect colour+shape, random motion"], rows)


def ci_label(levels: list[float | None]) -> str:
    """"95% CI" from the cells' eval.ci_level (diagnostics.json's `bootstrap.level`); levels that differ between
    cells are all named ("90% / 95% CI"); a file written without the level gives plain "CI"."""
    known = sorted({level for level in levels if level is not None})
    return " / ".join(f"{100 * level:g}%" for level in known) + " CI" if known else "CI"


def generator_table(cells: list[tuple[str, dict]], levels: list[float | None]) -> list[str]:
    rows = []
    for name, m in cells:
        for direction in DIRECTIONS:
            p = f"{direction}_generator/"
            delta = (f"{m[p + 'R1_delta']:+.1f} [{m[p + 'R1_delta_ci_low']:+.1f}, {m[p + 'R1_delta_ci_high']:+.1f}]"
                     if p + "R1_delta" in m else "–")
            rows.append([name, direction, _range(m, p + "generator_R1"), _range(m, p + "stage1_R1"), delta,
                         _range(m, p + "generator_mean_rank", 2), _range(m, p + "stage1_mean_rank", 2),
                         f"{_number(m.get(p + 'p_max'), 4)} ({_number(1 / k_of(m, p), 4)})",
                         f"{_number(m.get(p + 'p_entropy'), 3)} ({_number(m.get(p + 'p_entropy_uniform'), 3)})",
                         _number(m.get(p + "p_top_tied"))])
    return _table(["cell", "dir", "generator-only R@1 in top-k (draws)", "stage-1 R@1 in the same top-k",
                   f"generator − stage 1 [{ci_label(levels)}, paired]",
                   "true's mean rank, generator", "… stage 1", "max p (1/k)", "entropy of p (ln k)",
                   "% queries whose max p is tied"], rows)


def k_of(metrics: dict, prefix: str) -> float:
    """k from ln k (the uniform entropy) of a generator row."""
    entropy = metrics.get(prefix + "p_entropy_uniform")
    return math.exp(entropy) if entropy is not None else float("nan")


def noise_table(cells: list[tuple[str, dict]], steps: list[int]) -> list[str]:
    rows = []
    for name, m in cells:
        for direction in DIRECTIONS:
            p = f"{direction}_noise/"
            rows.append([name, direction, _number(m.get(p + "lists"), 0), *[
                f"{_number(m.get(f'{p}t{t}'))} / {_number(m.get(f'{p}t{t}_shuffled'))} / "
                f"{_number(m.get(f'{p}t{t}_copy_xt'))}" for t in steps], _number(m.get(p + "chance"))])
    return _table(["cell", "dir", "lists", *[f"t = {t}" for t in steps], "chance"], rows)


def probe_table(cells: list[tuple[str, dict]]) -> list[str]:
    rows = []
    for name, m in cells:
        for feature, label in PROBE_FEATURES:
            values = []
            for attribute in ("colour", "shape", "motion"):
                prefix = f"probe/{feature}/{attribute}/"
                if prefix + "chance" not in m:
                    values.append("n/a")
                    continue
                splits = [split for split in ("val", "test") if prefix + split in m]
                values.append(" / ".join(_number(m[prefix + split]) for split in splits)
                              + f" ({_number(m[prefix + 'chance'])})")
            if any(value != "n/a" for value in values):
                splits = "/".join(s for s in ("val", "test") if f"probe/{feature}/colour/{s}" in m)
                rows.append([name, label, splits, *values])
    return _table(["cell", "feature", "scored on", "colour (chance)", "shape (chance)", "motion (chance)"], rows)


def diagnostics_section(found: dict[str, dict | None]) -> str:
    """Markdown of the section; `found` maps "A → B" to its diagnostics.json (None when not written)."""
    lines = ["## Diagnostics (synthetic benchmarks)", "",
             "Written by the `diagnose` stage (`eval/<trained>__<evaluated>/diagnostics.json`, also logged as "
             "`diagnostics/...` metrics of the cell's evaluation run; `diffusionret diagnose --trained A --evaluated "
             "B` runs one cell). Each video's colour, shape and motion come from the generator's meanings.json; every "
             "order breaks ties at random. Chance levels in parentheses.", ""]
    cells, k, steps, levels = [], {}, [], []
    for name, result in found.items():
        if result is None:
            lines.append(f"- {name}: no diagnostics.json; run `dvc repro` (stage `diagnose`).")
        elif result.get("skipped"):
            lines.append(f"- {name}: skipped, {result['skipped']}.")
        else:
            cells.append((name, result["metrics"]))
            k[name] = result.get("k")
            levels.append((result.get("bootstrap") or {}).get("level"))  # eval.ci_level of the paired CI
            steps = sorted(set(steps) | set(result.get("noise_steps", [])))
            if result.get("probes_note"):
                lines.append(f"- {name}: {result['probes_note']}.")
    if not cells:
        return "\n".join(lines + [""])
    lines += ["", "**Top-1 attribute accuracy**, % of queries whose top-1 has the query's attribute (t2v: the "
              "caption's video's; v2t: the video's), stage 1 and re-ranked (mean over DDIM draws):", ""]
    lines += attribute_table(cells)
    lines += ["**Each query's top-k (stage 1)**: how many candidates share the query's colour / colour+shape, and "
              "where the true item stands in its colour+shape group (1-based, over queries whose true item is in "
              "the top-k; random order of the group: (g + 1) / (m + 1) for g items of which m true). The last two "
              "columns bound what a re-ranker that sees only colour and shape can do.", ""]
    lines += composition_table(cells, k)
    lines += ["**The generator alone**: the top-k ranked by p = softmax(x0_hat × rerank_temperature) alone (ties "
              "at random, never by stage-1 order) beside stage 1's order of the same lists; R@1 counts a query "
              "whose true item is outside the top-k as a miss, mean ranks are over the others. A flat p (max near "
              "1/k, entropy near ln k) adds nearly the same to every candidate and leaves stage 1's order.", ""]
    lines += generator_table(cells, levels)
    lines += ["**Top-1 accuracy of x0_hat by noise level**, % of lists: x0 (1 at the true item) noised to x_t "
              "with the trained schedule; `own / shuffled / x_t` = the denoiser with the list's own query, with "
              "another list's query, and argmax x_t itself. Near x_t's accuracy at low t and no drop when the query "
              "is shuffled: the denoiser copies x_t instead of reading the features.", ""]
    lines += noise_table(cells, steps)
    lines += ["**Linear probes** (logistic regression on standardised features, fitted on the trained "
              "benchmark's training split; accuracy % on the evaluated benchmark's splits; chance = 1 / number of "
              "labels):", ""]
    lines += probe_table(cells)
    return "\n".join(lines).rstrip() + "\n"
