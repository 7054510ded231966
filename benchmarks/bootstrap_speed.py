"""Bootstrap CIs of one evaluation cell: our vectorised numpy percentile bootstrap (evaluation/uncertainty.py)
against scipy.stats.bootstrap (percentile method, vectorised, paired over the draws) on the same ranks, with the
intervals side by side. Prints the wall time of each and their ratio, measured in this run.

    .venv/bin/python benchmarks/bootstrap_speed.py [--queries 1000] [--draws 3] [--resamples 1000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import stats

from diffusionret.evaluation.uncertainty import Bootstrap, compare_rows


def scipy_row(ranks: np.ndarray, boot: Bootstrap) -> dict[str, tuple[float, float]]:
    """The same statistics with scipy: each draw is one paired sample, so a resample keeps the draws together."""
    def make(name):
        def statistic(*draws, axis=-1):
            stacked = np.stack(draws)  # (n, ..., Q)
            if name == "MdR":
                return np.median(stacked, axis=axis).mean(axis=0) + 1.0
            if name == "MnR":
                return stacked.mean(axis=axis).mean(axis=0) + 1.0
            k = int(name[1:])
            return 100.0 * (stacked < k).mean(axis=axis).mean(axis=0)
        return statistic

    out = {}
    for name in ("R1", "R5", "R10", "R50", "MdR", "MnR"):
        found = stats.bootstrap(tuple(ranks), make(name), paired=True, vectorized=True, method="percentile",
                                n_resamples=boot.resamples, confidence_level=boot.level,
                                random_state=np.random.default_rng(boot.seed)).confidence_interval
        out[name] = (float(found.low), float(found.high))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    stage1 = rng.geometric(0.08, size=(1, args.queries)) - 1  # (1, Q) ranks, R@1 about 8%
    reranked = np.maximum(stage1 - rng.integers(0, 2, size=(args.draws, args.queries)), 0)  # (n, Q)
    boot = Bootstrap(args.resamples, 0, 0.95)

    start = time.perf_counter()
    found = compare_rows({"t2v": stage1, "t2v_rerank": reranked}, {"t2v_rerank": "t2v"}, boot)
    ours_s = time.perf_counter() - start
    ours = delta = found["t2v_rerank"]
    start = time.perf_counter()
    theirs = scipy_row(reranked, boot)
    scipy_s = time.perf_counter() - start

    print(f"queries {args.queries}, draws {args.draws}, resamples {args.resamples}, six metrics")
    print(f"numpy (CIs of stage 1 and re-ranked + the paired delta): {ours_s:.3f} s")
    print(f"scipy.stats.bootstrap (one row's CIs only): {scipy_s:.3f} s  ratio scipy/numpy {scipy_s / ours_s:.1f}x")
    for name, (low, high) in theirs.items():
        print(f"  {name:>4}: numpy [{ours[name + '_ci_low']:.2f}, {ours[name + '_ci_high']:.2f}]  "
              f"scipy [{low:.2f}, {high:.2f}]  delta {delta[name + '_delta']:+.2f} "
              f"[{delta[name + '_delta_ci_low']:+.2f}, {delta[name + '_delta_ci_high']:+.2f}]")


if __name__ == "__main__":
    main()
