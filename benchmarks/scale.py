"""Scale by simulation: the pipeline's stages on a benchmark with MSRVTT's shape, at 1/8, 1/4, 1/2 and full size.

What is simulated (and what is real):
- Data: the MSRVTT file layout (`MSRVTT_train.9k.csv`, `MSRVTT_data.json`, `MSRVTT_JSFUSION_test.csv`) read by
  the real MSRVTT reader; at full size 9,000 training videos with 20 captions each (180,000 captions), 500 of
  them carved out as the validation split as params.yaml does for msrvtt (first caption each), and 1,000 test
  pairs. Every count is scaled by the fraction. Captions are 12-30 random words from a 300-word vocabulary (the
  tokenizer cuts them to 32 tokens). Videos are real H.264 files, one per id, each rendered separately
  (a moving shape, 32 x 32 px, 12 frames at 1 fps), decoded by the real `preprocess` (decord) path.
  Real MSRVTT clips are 10-30 s of 320 x 240 at 30 fps, so decoding here is far cheaper than for real videos.
- Model: the `tiny-512` backbone, 1-layer 32-wide towers projected to ViT-B/32's joint width 512, so every
  cached feature has its real size (32 words x 512 per caption, 12 frames x 512 per video); temporal module
  `none`. CLIP's compute is NOT simulated (see `diffusionret model-summary --flops` for that).
- Stages: the real stage entry points (`stages/*.py`, run by plain `python`, one process each) in a scratch
  workspace with its own params.yaml: preprocess, train_disc (a few steps), extract, train_gen (a fixed number
  of steps at the official global batch 128, then its validation re-ranking), evaluate (1 DDIM draw, both
  directions, QB-Norm bank of params.yaml). Stage 1 and 2 step counts do not grow with the data; what grows is
  loading, caching, validation and evaluation.

Measured per stage: wall time and peak resident memory (ru_maxrss of the stage's process from wait4; for
preprocess the largest of its processes, decoding runs in `--workers` processes), plus the feature cache size
on disk. The growth per stage is the least-squares slope of log(time) and log(peak RSS) against log(size):
1 = linear, 2 = quadratic, 0 = constant.

    .venv/bin/python benchmarks/scale.py                      # all four sizes (results in <work>/results.json)
    .venv/bin/python benchmarks/scale.py --fractions 0.125    # one size
    .venv/bin/python benchmarks/scale.py --table-only         # print the table of what results.json holds
    .venv/bin/python benchmarks/scale.py --fractions 1 --reuse --stages train_gen evaluate   # re-measure (after --keep)

It needs about 15 GB of free disk at full size (the float16 token features of 180,000 captions are 5.9 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
FULL = {"videos": 9000, "captions_per_video": 20, "val_videos": 500, "test_pairs": 1000}
NAME = "msrvtt-sim"
STAGES = ("preprocess", "train_disc", "extract", "train_gen", "evaluate")
WORDS = [f"w{i}" for i in range(300)]


def sizes(fraction: float) -> dict[str, int]:
    return {"videos": round(FULL["videos"] * fraction), "captions_per_video": FULL["captions_per_video"],
            "val_videos": round(FULL["val_videos"] * fraction), "test_pairs": round(FULL["test_pairs"] * fraction)}


def caption(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(12, 31))))


def make_video_pool(pool: Path, count: int) -> float:
    """`count` distinct 32 px, 12-frame H.264 videos pool/video<i>.mp4 (kept between runs); returns seconds."""
    from diffusionret.data.synthetic import MEANINGS, render_video, write_mp4

    pool.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for i in range(count):
        path = pool / f"video{i}.mp4"
        if path.exists():
            continue
        frames = render_video(MEANINGS[i % len(MEANINGS)], [7, i], textured=False, image_size=32, fps=4)
        frames = np.concatenate([frames] * (12 // len(frames) + 1))[:12]  # (12, 32, 32, 3): 12 s at 1 fps
        write_mp4(path, frames, fps=1)
    return time.perf_counter() - started


def make_benchmark(raw: Path, pool: Path, n: dict[str, int], seed: int = 0) -> None:
    """The MSRVTT annotation files for n's counts; videos hard-linked from the pool."""
    rng = np.random.default_rng(seed)
    videos_dir = raw / "videos"
    videos_dir.mkdir(parents=True, exist_ok=True)
    train_ids = [f"video{i}" for i in range(n["videos"])]
    test_ids = [f"video{n['videos'] + i}" for i in range(n["test_pairs"])]
    sentences, rows = [], []
    for video in train_ids:
        sentences += [{"video_id": video, "caption": caption(rng), "sen_id": len(sentences)}
                      for _ in range(n["captions_per_video"])]
    for row, video in enumerate(test_ids):
        text = caption(rng)
        sentences.append({"video_id": video, "caption": text, "sen_id": len(sentences)})
        rows.append(f"ret{row},msr{row},{video},{text}")
    videos = [{"video_id": v, "split": "train"} for v in train_ids] + [{"video_id": v, "split": "test"}
                                                                       for v in test_ids]
    (raw / "MSRVTT_train.9k.csv").write_text("video_id\n" + "\n".join(train_ids) + "\n")
    (raw / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id,sentence\n" + "\n".join(rows) + "\n")
    (raw / "MSRVTT_data.json").write_text(json.dumps({"videos": videos, "sentences": sentences}))
    for index, video in enumerate(train_ids + test_ids):
        target = videos_dir / f"{video}.mp4"
        if not target.exists():
            os.link(pool / f"video{index}.mp4", target)


def write_params(workspace: Path, n: dict[str, int], args) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    bench = dict(params["benchmarks"]["msrvtt"])
    bench.update(source="synthetic", val_videos_from_train=n["val_videos"],
                 synthetic=dict(params["benchmarks"]["synthetic"]["synthetic"]))
    params["benchmarks"] = {NAME: bench}
    params["data"].update(raw_root=str(workspace / "raw"), features_dtype=args.features_dtype,
                          features_loading=args.features_loading)
    params["preprocess"].update(image_size=32, workers=args.workers)
    params["model"].update(backbone="tiny-512", temporal="none", temporal_layers=1)  # unused by "none"
    params["train"].update(benchmarks=[NAME], steps=args.stage1_steps, global_batch=128, warmup_steps=0,
                           val_every=args.stage1_steps, log_every=1, checkpoint_every=args.stage1_steps)
    params["train_gen"].update(steps=args.stage2_steps, global_batch=128, num_negatives=127, warmup_steps=0,
                               val_every=args.stage2_steps, log_every=1, checkpoint_every=args.stage2_steps)
    params["eval"].update(benchmarks=[NAME], num_samples=1)
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_stage(workspace: Path, stage: str) -> dict:
    """Run stages/<stage>.py in `workspace`; wall seconds and peak RSS (GiB) of its process tree's largest one."""
    flags = ["--benchmark", NAME] if stage in ("preprocess", "train_disc", "train_gen") else \
        ["--trained", NAME, "--evaluated", NAME]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workspace / 'mlruns.db'}", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "DIFFUSIONRET_TRACEBACK": "1"}
    log = (workspace / f"{stage}.log").open("w")
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, str(REPO / "stages" / f"{stage}.py"), *flags], cwd=workspace,
                               env=env, stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    log.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{stage} failed in {workspace}; see {workspace / (stage + '.log')}")
    return {"seconds": round(seconds, 2), "peak_rss_gib": round(usage.ru_maxrss / 2 ** 20, 3)}


def directory_gib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2 ** 30


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def slope(xs: list[float], ys: list[float]) -> float:
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0]) if len(xs) >= 2 else float("nan")


def growth(slope_value: float) -> str:
    if np.isnan(slope_value):
        return "-"
    if slope_value < 0.3:
        return "about constant"
    if slope_value < 1.25:
        return "linear or below"
    return "super-linear"


def print_table(results: dict) -> None:
    points = sorted(results.values(), key=lambda r: r["fraction"])
    if not points:
        print("no results yet")
        return
    print(f"{'fraction':>8} {'train videos':>12} {'captions':>9} {'test':>5}  " +
          "  ".join(f"{stage:>19}" for stage in STAGES) + f"  {'cache GiB':>9}")
    print(" " * 39 + "  ".join(f"{'s':>9} {'peak GiB':>9}" for _ in STAGES))
    for point in points:
        n = point["sizes"]
        cells = []
        for stage in STAGES:
            measured = point["stages"].get(stage)
            cells.append(f"{measured['seconds']:>9.1f} {measured['peak_rss_gib']:>9.2f}" if measured else f"{'-':>19}")
        print(f"{point['fraction']:>8.3f} {n['videos']:>12,} {n['videos'] * n['captions_per_video']:>9,} "
              f"{n['test_pairs']:>5}  " + "  ".join(cells) + f"  {point.get('cache_gib', float('nan')):>9.2f}")
    print("\ngrowth with size (least-squares slope of log value vs log size; 1 = linear):")
    for stage in STAGES:
        have = [p for p in points if stage in p["stages"]]
        xs = [p["fraction"] for p in have]
        time_slope = slope(xs, [p["stages"][stage]["seconds"] for p in have])
        rss_slope = slope(xs, [p["stages"][stage]["peak_rss_gib"] for p in have])
        print(f"  {stage:<11} time {time_slope:5.2f} ({growth(time_slope)}), "
              f"peak RSS {rss_slope:5.2f} ({growth(rss_slope)})")
    largest = points[-1]
    measured = [largest["stages"][s]["peak_rss_gib"] for s in ("extract", "train_gen", "evaluate")
                if s in largest["stages"]]
    if measured:
        print(f"\nlargest size reached: {largest['fraction']:g} x MSRVTT; peak RSS of extract / train_gen / evaluate: "
              + " / ".join(f"{value:.2f}" for value in measured) + " GiB (goal: under 8 GB each)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.125, 0.25, 0.5, 1.0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/diffusionret-scale"))
    parser.add_argument("--stage1-steps", type=int, default=2)
    parser.add_argument("--stage2-steps", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--features-dtype", default="float16")
    parser.add_argument("--features-loading", default="disk")
    parser.add_argument("--keep", action="store_true", help="keep each size's workspace (default: delete the "
                                                            "feature cache and frames after measuring)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                        help="with --reuse: re-measure only these stages in the kept workspace")
    parser.add_argument("--reuse", action="store_true", help="keep the size's existing workspace (from --keep) "
                                                             "and re-measure --stages only")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    results_path = args.work / "results.json"
    results = load_results(results_path)
    if args.table_only:
        print_table(results)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    largest = sizes(max(args.fractions))
    pool_seconds = make_video_pool(args.work / "pool", largest["videos"] + largest["test_pairs"])
    print(f"video pool ready ({pool_seconds:.0f} s to generate what was missing)", flush=True)
    for fraction in sorted(args.fractions):
        n = sizes(fraction)
        workspace = args.work / f"size-{fraction:g}"
        if args.reuse and f"{fraction:g}" in results:
            point, stages = results[f"{fraction:g}"], args.stages
        else:
            if workspace.exists():
                shutil.rmtree(workspace)
            workspace.mkdir(parents=True)
            make_benchmark(workspace / "raw" / NAME, args.work / "pool", n)
            point, stages = {"fraction": fraction, "sizes": n, "stages": {}}, STAGES
        write_params(workspace, n, args)
        point["settings"] = {"stage1_steps": args.stage1_steps, "stage2_steps": args.stage2_steps,
                             "features_dtype": args.features_dtype, "features_loading": args.features_loading,
                             "workers": args.workers}
        for stage in stages:
            point["stages"][stage] = run_stage(workspace, stage)
            if stage == "extract":
                point["cache_gib"] = round(directory_gib(workspace / "data" / "features"), 3)
            results[f"{fraction:g}"] = point
            results_path.write_text(json.dumps(results, indent=1) + "\n")
            print(f"size {fraction:g}: {stage} {point['stages'][stage]}", flush=True)
        if not args.keep:
            for heavy in ("data/features", "data/frames", "data/partial"):
                shutil.rmtree(workspace / heavy, ignore_errors=True)
    print_table(results)


if __name__ == "__main__":
    main()
