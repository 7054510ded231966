"""The metric-name contract of an evaluation cell, defined once (the evaluate stage writes it, the report reads it).

A flat metric key is `<prefix>/<name>`: prefix = direction + row suffix (+ `_faithful`), name = R1, R5, R10, R50,
MdR, MnR (and `<name>_std`, the sample std over DDIM draws, for re-ranked rows with several draws).
  t2v, v2t                          stage-1 similarities
  t2v_rerank, v2t_rerank            + diffusion re-ranking of each query's top-k
  t2v_qbnorm, t2v_rerank_qbnorm     + QB-Norm of the stage-1 / re-ranked scores (likewise v2t)
  t2v_dsl, t2v_rerank_dsl           + dual softmax over the test queries (transductive)
  <prefix>_faithful                 the same row under the released off-by-one MSVD grouping
  chance/...                        a uniformly random ranking; protocol/... how checkpoints were selected
  <prefix>/<name>_ci_low, _ci_high  bootstrap CI over queries (`uncertainty`); bootstrap/... its settings
  <prefix>/<name>_delta[_ci_low|_ci_high]  a comparison row minus the stage-1 row of its direction, paired CI
  <prefix>/<name>_shift[_ci_low|_ci_high]  an OOD cell's row minus the in-distribution cell's
  ood_detect/<score>/<metric>       OOD query detection, t2v (ood_detect_v2t/... for v2t)
  captions/test/...                 test captions max_words cuts (truncated, max_excess, mean_excess, longest)
  ties/...                          exact ties between different captions' score rows / sentence vectors

metrics.json holds every key (one file, all rows, so post-processed rows keep their suffix). An MLflow child run
holds ONE post-processing, so its keys drop that suffix (`t2v_qbnorm/R1` is logged as `t2v/R1` in the qbnorm
run) and runs compare column by column; `run_metric_name` / `file_metric_key` map between the two.
"""

from __future__ import annotations

from diffusionret.evaluation.metrics import DEFAULT_KS

DIRECTIONS = ("t2v", "v2t")
POSTPROCESSES = ("none", "qbnorm", "dsl")
# row suffix -> (post-processing, re-ranked?), in the order the evaluate stage computes them
ROWS = {"": ("none", False), "_rerank": ("none", True), "_qbnorm": ("qbnorm", False),
        "_rerank_qbnorm": ("qbnorm", True), "_dsl": ("dsl", False), "_rerank_dsl": ("dsl", True)}
FAITHFUL_SUFFIX = "_faithful"
REPORTED_KS = DEFAULT_KS  # R@1, R@5, R@10, R@50
RANK_METRICS = tuple(f"R{k}" for k in REPORTED_KS) + ("MdR", "MnR")
OOD_PREFIXES = {"t2v": "ood_detect", "v2t": "ood_detect_v2t"}  # metric prefix of each direction's detection
OOD_SIDES = ("id", "ood")
CELL_PREFIXES = ("chance", "protocol", "bootstrap", "captions", "ties")  # cell-wide keys, logged with the postprocess=none run
# the headline (the DVC metric): R@1/5/10, MdR, MnR of stage 1 and re-ranked, both directions, one small file per
# row (eval/<A>__<B>/headline/<row>.json) so that `dvc metrics show` is a table of five columns that fits a terminal
HEADLINE_METRICS = ("R1", "R5", "R10", "MdR", "MnR")
HEADLINE_ROWS = ("", "_rerank")


def row_suffix(postprocess: str, reranked: bool) -> str:
    """The row suffix of a (post-processing, re-ranked) pair, e.g. ("qbnorm", True) -> "_rerank_qbnorm"."""
    return next(suffix for suffix, row in ROWS.items() if row == (postprocess, reranked))


def split_key(key: str) -> tuple[str, str, bool, str]:
    """`t2v_rerank_qbnorm_faithful/R1` -> ("t2v", "_rerank_qbnorm", True, "R1"); ValueError for a non-row key."""
    prefix, name = key.split("/", 1)
    faithful = prefix.endswith(FAITHFUL_SUFFIX)
    prefix = prefix.removesuffix(FAITHFUL_SUFFIX)
    direction, suffix = prefix[:3], prefix[3:]
    if direction not in DIRECTIONS or suffix not in ROWS:
        raise ValueError(f"{key!r} is not a row metric (<direction><row suffix>[{FAITHFUL_SUFFIX}]/<name>)")
    return direction, suffix, faithful, name


def is_row_key(key: str) -> bool:
    try:
        split_key(key)
    except ValueError:
        return False
    return True


def postprocess_of(key: str) -> str:
    """The post-processing a key belongs to: its row's, or "none" for cell-wide and OOD-detection keys."""
    return ROWS[split_key(key)[1]][0] if is_row_key(key) else "none"


def run_metric_name(key: str) -> str:
    """The name of a metrics.json key inside its post-processing's MLflow run: the post-processing suffix dropped."""
    if not is_row_key(key):
        return key
    direction, suffix, faithful, name = split_key(key)
    reranked = ROWS[suffix][1]
    return f"{direction}{row_suffix('none', reranked)}{FAITHFUL_SUFFIX if faithful else ''}/{name}"


def file_metric_key(name: str, postprocess: str) -> str:
    """Inverse of `run_metric_name`: the metrics.json key of metric `name` logged in the `postprocess` run."""
    if not is_row_key(name):
        return name
    direction, suffix, faithful, metric = split_key(name)
    reranked = ROWS[suffix][1]
    return f"{direction}{row_suffix(postprocess, reranked)}{FAITHFUL_SUFFIX if faithful else ''}/{metric}"


def headline_rows() -> tuple[str, ...]:
    """The rows of the headline, one file each: t2v, t2v_rerank, v2t, v2t_rerank."""
    return tuple(direction + suffix for direction in DIRECTIONS for suffix in HEADLINE_ROWS)


def headline_keys() -> tuple[str, ...]:
    """The keys of the headline file: R@1/5/10, MdR, MnR of stage 1 and re-ranked rows, t2v then v2t."""
    return tuple(f"{direction}{suffix}/{name}" for direction in DIRECTIONS for suffix in HEADLINE_ROWS
                 for name in HEADLINE_METRICS)
