"""The `diffusionret` console command. Sub-commands import their heavy dependencies lazily.

    diffusionret model-summary [--params params.yaml] [-S key=value ...] [--json] [--flops [--benchmark NAME]]
    diffusionret data check --benchmark NAME [--root DIR] [--params params.yaml] [-S key=value ...] [--json]
    diffusionret index --videos DIR --model models/<benchmark> --out INDEX_DIR    (search your own videos)
    diffusionret search --index INDEX_DIR "query text" [--top 10] [--rerank/--no-rerank] [--json]
    diffusionret serve --index INDEX_DIR [--port 8765]
    diffusionret preset list | show NAME | apply NAME | run NAME [--backbone DIR_OR_HUB_ID] [-S key=value ...]
    diffusionret mlflow-url [--base http://127.0.0.1:5000]   (the run table of the first trained benchmark)
    diffusionret diagnose --trained A --evaluated B [-S key=value ...] [--no-mlflow] [--json]   (synthetic cells)
    diffusionret seeds --seeds 0 1 2 [-S key=value ...]       (the default over seeds: reports/seeds.md)
    diffusionret heads [--heads wti emcl ...] [--seeds ...] [-S key=value ...]   (every head: reports/heads.md)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from diffusionret import tracking
from diffusionret.config import ConfigError, Params, params_from_dict, split_override


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `dvc exp run -S`-style `dotted.key=value` overrides (values parsed as YAML) to raw params."""
    for override in overrides:
        parts, value = split_override(override)
        dotted = ".".join(parts)
        node = raw
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"override `{dotted}`: `{part}` is not a section of params.yaml")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"override `{dotted}`: unknown key `{parts[-1]}`")
        node[parts[-1]] = value
    return raw


def load_with_overrides(path: Path, overrides: list[str]) -> Params:
    if not path.is_file():
        raise ConfigError(f"params file {path} not found")
    return params_from_dict(apply_overrides(yaml.safe_load(path.read_text()) or {}, overrides))


def count(module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def _seeded_extractor(model):
    """The extractor `model` (params.model) describes, initialised under seed 0 (lazy imports: see model_summary).

    A named config is trained from scratch with our BPE (vocabulary tokenizer_vocab_size; ids 0/1/2 are
    start/end/pad); a checkpoint brings its own vocabulary.
    """
    import torch

    from diffusionret.model.backbone import NAMED_CLIP_CONFIGS
    from diffusionret.model.extractor import build_feature_extractor

    special = {}
    if model.backbone in NAMED_CLIP_CONFIGS:
        special = dict(vocab_size=model.tokenizer_vocab_size, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    torch.manual_seed(0)
    return build_feature_extractor(model.backbone, temporal=model.temporal, temporal_layers=model.temporal_layers,
                                   head=model.head, head_params=model.head_params(),
                                   frame_feature=model.frame_feature, frame_grid=model.frame_grid, **special)


def model_summary(params: Params) -> dict:
    """Parameter counts per module of the extractor and the generator that `params` describe."""
    # lazy: torch + the model stack take seconds to import (measured 20 s on a loaded 2-core machine; the
    # parsers 0.4 s), and `diffusionret --help` / `data-check` never need them
    from diffusionret.model.denoiser import Generator

    model = params.model
    extractor = _seeded_extractor(model)
    clip = extractor.backbone.clip
    width = extractor.backbone.width
    generator = Generator(width, frame_temperature=params.train_gen.frame_temperature)
    modules = {
        "clip.text_model": count(clip.text_model),
        "clip.vision_model": count(clip.vision_model),
        "clip.projections+logit_scale": count(clip) - count(clip.text_model) - count(clip.vision_model),
        "temporal": count(extractor.temporal),
        "head": count(extractor.head),
        "denoiser.t2v": count(generator.t2v),
        "denoiser.v2t": count(generator.v2t),
    }
    return {
        "backbone": model.backbone, "vocab_size": clip.config.text_config.vocab_size, "width": width,
        "modules": modules,
        "extractor_total": count(extractor),
        "extractor_trainable_stage1": sum(p.numel() for p in extractor.parameters() if p.requires_grad),
        "generator_total": count(generator),
        "heads": head_counts(model, width),
    }


def head_counts(model, width: int) -> dict:
    """Every registered head at `width` (with its params.yaml block): learned parameters, persistent state
    (buffers, e.g. EMCL's bases) and the change of the extractor's parameter count against `wti`."""
    import dataclasses

    import torch

    from diffusionret.config import HEADS_WITH_PARAMS
    from diffusionret.model.heads import SIMILARITY_HEADS, build_head

    counts = {}
    for name in SIMILARITY_HEADS:
        block = dataclasses.asdict(getattr(model, name)) if name in HEADS_WITH_PARAMS else None
        torch.manual_seed(0)
        head = build_head(name, width, head_params=block)
        counts[name] = {"parameters": count(head), "state": sum(b.numel() for b in head.buffers())}
    for name in counts:
        counts[name]["vs_wti"] = counts[name]["parameters"] - counts["wti"]["parameters"]
    return counts


def flops_summary(params: Params, benchmark: str | None, utilisation: float, epochs: int,
                  train_captions: int, train_videos: int, test_pairs: int) -> dict:
    """Counted FLOPs per clip and per step of both stages at params' model, batches and the benchmark's
    frames/words, and the GPU hours they imply for a workload (default: MSRVTT-9k, 5 epochs per stage)."""
    # lazy, as in model_summary: torch and the model stack only for this sub-command
    from diffusionret.profiling import flops

    model = params.model
    bench = params.benchmark(benchmark or params.train.benchmarks[0])
    extractor = _seeded_extractor(model)
    stage1 = flops.stage1_flops(extractor, batch=params.train.global_batch, frames=bench.max_frames,
                                words=bench.max_words)
    stage2 = flops.stage2_flops(extractor, batch=params.train_gen.global_batch, frames=bench.max_frames,
                                words=bench.max_words, diffusion_steps=params.diffusion.steps,
                                frame_temperature=params.train_gen.frame_temperature)
    workload = flops.Workload(train_captions=train_captions, train_videos=train_videos, test_pairs=test_pairs,
                              epochs=epochs)
    rows = flops.projection(stage1, stage2, params.train_gen.global_batch, workload, utilisation)
    return {
        "backbone": model.backbone, "image_size": extractor.backbone.image_size, "frames": bench.max_frames,
        "words": bench.max_words,
        "gflop": {"clip_train": stage1.clip_train / 1e9, "text_forward": stage1.text_forward / 1e9,
                  "video_forward": stage1.video_forward / 1e9, "stage1_head_train": stage1.head_train / 1e9,
                  "stage1_step": stage1.step / 1e9, "stage2_step": stage2 / 1e9},
        "batches": {"stage1": params.train.global_batch, "stage2": params.train_gen.global_batch},
        "workload": {"train_captions": train_captions, "train_videos": train_videos, "test_pairs": test_pairs,
                     "epochs": epochs, "stage1_steps": workload.steps(params.train.global_batch),
                     "stage2_steps": workload.steps(params.train_gen.global_batch)},
        "assumption": {"utilisation": utilisation, "peak_tflops": flops.GPU_PEAK_TFLOPS},
        "projection_hours": rows,
    }


def _print_flops(result: dict) -> None:
    g, w = result["gflop"], result["workload"]
    print(f"\nFLOPs counted by torch's FlopCounterMode (matrix products, convolutions, attention; forward + backward)")
    print(f"  {result['backbone']}, {result['frames']} frames x {result['image_size']} px, {result['words']} words")
    print(f"  {'one clip, forward + backward':<40} {g['clip_train']:>12,.1f} GFLOP")
    print(f"  {'  forward: video (all frames) / caption':<40} {g['video_forward']:>12,.1f} / {g['text_forward']:,.1f} GFLOP")
    print(f"  {'stage-1 step (batch %d)' % result['batches']['stage1']:<40} {g['stage1_step']:>12,.1f} GFLOP"
          f"  (of which the (B, B) head + loss {g['stage1_head_train']:,.1f})")
    print(f"  {'stage-2 step (batch %d)' % result['batches']['stage2']:<40} {g['stage2_step']:>12,.1f} GFLOP")
    gpus = [key for key in result["projection_hours"][0] if key not in ("stage", "pflop")]
    print(f"\nprojected compute hours: {w['train_captions']:,} captions / {w['train_videos']:,} videos, "
          f"{w['epochs']} epochs per stage ({w['stage1_steps']:,} stage-1 and {w['stage2_steps']:,} stage-2 steps), "
          f"{result['assumption']['utilisation']:.0%} of the dense peak sustained "
          f"({', '.join(f'{k} {v:g} TFLOP/s' for k, v in result['assumption']['peak_tflops'].items())})")
    print(f"  {'stage':<22} {'PFLOP':>10} " + " ".join(f"{gpu:>38}" for gpu in gpus))
    for row in result["projection_hours"]:
        print(f"  {row['stage']:<22} {row['pflop']:>10,.2f} " + " ".join(f"{row[gpu]:>38.3f}" for gpu in gpus))


def _print_summary(summary: dict) -> None:
    print(f"backbone {summary['backbone']}  (width {summary['width']}, vocabulary {summary['vocab_size']})")
    for name, value in summary["modules"].items():
        print(f"  {name:<32} {value:>14,}")
    print(f"  {'feature extractor (stage 1)':<32} {summary['extractor_total']:>14,}"
          f"  ({summary['extractor_trainable_stage1']:,} trainable: patch embedding frozen)")
    print(f"  {'generator (stage 2, trainable)':<32} {summary['generator_total']:>14,}")
    print(f"similarity heads at width {summary['width']} (model.head = any of these; state = saved buffers)")
    for name, value in summary["heads"].items():
        print(f"  {name:<32} {value['parameters']:>14,}  vs wti {value['vs_wti']:>+12,}  state {value['state']:,}")


def data_check(params: Params, benchmark: str, root: Path | None, params_file: Path) -> dict:
    """Read a benchmark's annotations and match its videos (no decoding); `root` defaults to its raw folder."""
    from diffusionret.pipeline.preprocess import check_benchmark_files  # lazy: only this sub-command reads videos

    settings = params.benchmark(benchmark)
    if root is None:
        raw_root = Path(params.data.raw_root)
        raw_root = raw_root if raw_root.is_absolute() else params_file.resolve().parent / raw_root
        root = raw_root / (benchmark if settings.source == "synthetic" else settings.source)
    return check_benchmark_files(benchmark, settings, root, stage1_token_counts(params, params_file))


def stage1_token_counts(params: Params, params_file: Path) -> dict:
    """`tokenizer:<A>` -> token lengths under the stage-1 tokenizer of every trained benchmark A that has one
    (models/<A>/disc/tokenizer): `data check` then counts the cut captions exactly, beside the lower bound."""
    from diffusionret.model.tokenizer import load_tokenizer, token_lengths

    found = {}
    for trained in params.train.benchmarks:
        directory = params_file.resolve().parent / "models" / trained / "disc" / "tokenizer"
        if directory.is_dir():
            tokenizer = load_tokenizer(directory)
            found[f"tokenizer:{trained}"] = lambda captions, tokenizer=tokenizer: token_lengths(tokenizer, captions)
    return found


def _print_check(result: dict) -> None:
    print(f"{result['benchmark']} under {result['root']}: {result['video_files']} video files found")
    print(f"  {'split':<6} {'videos':>8} {'captions':>9} {'missing videos':>15} {'their captions':>15}")
    for split, count in result["splits"].items():
        if "error" in count:
            print(f"  {split:<6} cannot be read: {count['error']}")
        else:
            print(f"  {split:<6} {count['videos']:>8,} {count['captions']:>9,} {count['missing_videos']:>15,} "
                  f"{count['missing_captions']:>15,}")
    if result["missing"]:
        print(f"{result['missing_videos']} annotated videos have no file; first {min(10, len(result['missing']))}: "
              f"{', '.join(result['missing'][:10])} (--json lists all)")
    for pair, ids in result["shared_videos"].items():
        verdict = "a leak: test results would measure memorisation" if pair == "train-test" else "reported only"
        print(f"{len(ids)} videos are in both {pair.replace('-', ' and ')} ({verdict}); first "
              f"{min(10, len(ids))}: {', '.join(ids[:10])}")
    print(f"captions cut at max_words (word_pieces = a lower bound before stage 1; tokenizer:<A> = exact):")
    for counted_with, per_split in result.get("truncation", {}).items():
        for split, cut in per_split.items():
            print(f"  {counted_with:<24} {split:<6} {cut['truncated']:>6,} of {cut['captions']:,} cut (max "
                  f"{cut['max_excess']}, mean {cut['mean_excess']:.1f} tokens over; longest {cut['longest']} of "
                  f"max_words {cut['max_words']})")
    print("complete" if result["complete"] else "INCOMPLETE")


# --- paper presets (issue 15) -----------------------------------------------------------------------------------


def preset_overrides(name: str, backbone: str | None, extra: list[str], directory: Path) -> list[str]:
    """The preset's `key=value` overrides, then `--backbone`, then the user's `-S` (later ones win)."""
    from diffusionret.presets import load_preset, merge, override_strings, parse_user_overrides

    nested = load_preset(name, directory)
    if backbone:
        nested = merge(nested, {"model": {"backbone": backbone}})
    return override_strings(merge(nested, parse_user_overrides(extra)))


def hub_environment(offline: bool) -> dict[str, str]:
    """The environment of a preset run: the hub allowed for the backbone (make exports it switched off)."""
    import os

    value = "1" if offline else "0"
    return {**os.environ, "HF_HUB_OFFLINE": value, "TRANSFORMERS_OFFLINE": value}


def fetch_backbone(overrides: list[str], offline: bool) -> str | None:
    """Download (or find in the hub cache) the preset's pretrained backbone before anything runs."""
    import os

    from diffusionret.model.backbone import NAMED_CLIP_CONFIGS

    backbone = yaml.safe_load(next(o for o in overrides if o.startswith("model.backbone=")).split("=", 1)[1])
    if backbone in NAMED_CLIP_CONFIGS:
        return None
    os.environ.update({key: hub_environment(offline)[key] for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")})
    from diffusionret.model.backbone import resolve_backbone

    return resolve_backbone(backbone)


def run_preset(args) -> int:
    """`preset list|show|apply|run`: the official recipe of a benchmark applied with one command."""
    import shlex
    import subprocess

    from diffusionret.presets import apply_to_params_file, preset_names

    if args.preset_command == "list":
        print("\n".join(preset_names(args.presets)))
        return 0
    overrides = preset_overrides(args.name, args.backbone, args.overrides, args.presets)
    command = ["dvc", "exp", "run", *(["--name", args.exp_name] if args.exp_name else [])]
    for override in overrides:
        command += ["-S", override]
    if args.preset_command == "show":
        print(shlex.join(command))
        return 0
    if args.preset_command == "apply":
        apply_to_params_file(args.params, overrides)
        print(f"{args.params}: {len(overrides)} values of preset {args.name} written; run `dvc repro` (with the hub "
              f"allowed for model.backbone, e.g. HF_HUB_OFFLINE=0) or `dvc exp run`")
        return 0
    folder = fetch_backbone(overrides, args.offline)
    if folder:
        print(f"backbone ready in {folder}")
    if args.dry_run:
        print(shlex.join(command))
        return 0
    return subprocess.call(command, env=hub_environment(args.offline))


def run_diagnose_command(args) -> int:
    """`diagnose`: the diagnose stage's work on one cell, with params (and -S overrides) from --params."""
    from diffusionret.pipeline.diagnose import print_summary, run_diagnose  # lazy: torch, sklearn
    from diffusionret.pipeline.paths import Paths

    params = load_with_overrides(args.params, args.overrides)
    params.benchmark(args.trained), params.benchmark(args.evaluated)
    root = args.params.resolve().parent
    result = run_diagnose(args.trained, args.evaluated, params, Paths(root, params.data), root,
                          log=not args.no_mlflow)
    print(json.dumps(result, indent=2)) if args.json else print_summary(result)
    return 0


def _add_preset_parser(commands) -> None:
    preset = commands.add_parser("preset", help="paper presets: the official recipe of one benchmark, one command")
    preset_commands = preset.add_subparsers(dest="preset_command", required=True)
    listing = preset_commands.add_parser("list", help="the preset names")
    listing.add_argument("--presets", type=Path, default=Path("configs/presets"))
    for name, text in (("show", "print the `dvc exp run` command of a preset"),
                       ("apply", "write a preset's values into params.yaml (as `dvc exp run -S` would)"),
                       ("run", "fetch the preset's backbone (hub allowed) and start `dvc exp run` with its values")):
        sub = preset_commands.add_parser(name, help=text)
        sub.add_argument("name", help="<benchmark>-<variant>, e.g. msrvtt-9k-vitb32 (`diffusionret preset list`)")
        sub.add_argument("--backbone", help="model.backbone instead of the preset's hub id: a local CLIP folder "
                                            "(config.json, weights, tokenizer files) or another hub id")
        sub.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="further params overrides, after the preset's (e.g. train.micro_batch=32)")
        sub.add_argument("--name", dest="exp_name", help="name of the DVC experiment")
        sub.add_argument("--presets", type=Path, default=Path("configs/presets"))
        sub.add_argument("--params", type=Path, default=Path("params.yaml"))
        sub.add_argument("--offline", action="store_true", help="keep the hub switched off (the backbone must be "
                                                                "a local folder or in the hub cache)")
        sub.add_argument("--dry-run", action="store_true", help="run: fetch the backbone, print the command only")


def run_seeds_command(args) -> int:
    """`diffusionret seeds`: one DVC experiment per seed, then the table over seeds."""
    from diffusionret.pipeline.evaluate import bootstrap_settings
    from diffusionret.pipeline import seeds as seed_study

    repo = args.params.resolve().parent
    out = args.out if args.out.is_absolute() else repo / args.out
    if args.summary_only:
        folders = {seed: out / "seeds" / f"seed-{seed}" for seed in args.seeds}
        missing = [str(path) for path in folders.values() if not (path / "done.json").is_file()]
        if missing:
            raise ValueError(f"{', '.join(missing)} not collected: run without --summary-only")
    else:
        found = seed_study.run_seeds(repo, list(args.seeds), out / "seeds", args.overrides, args.params.name)
        folders = dict(zip(args.seeds, found))
    summary = seed_study.write_summary(folders, bootstrap_settings(load_with_overrides(args.params, [])), out)
    print(f"wrote {out / 'seeds.md'} and {out / 'seeds.json'} ({len(summary['cells'])} cells, seeds {args.seeds})")
    return 0


def run_heads_command(args) -> int:
    """`diffusionret heads`: one DVC experiment per head and seed (those not yet collected), then the table."""
    from diffusionret.config import SIMILARITY_HEADS
    from diffusionret.pipeline import heads as head_study
    from diffusionret.pipeline.evaluate import bootstrap_settings

    repo = args.params.resolve().parent
    out = args.out if args.out.is_absolute() else repo / args.out
    heads = list(args.heads or SIMILARITY_HEADS)
    if args.summary_only:
        runs = head_study.head_runs(heads, args.seeds, load_with_overrides(args.params, []), args.overrides,
                                    repo / head_study.PRESETS_DIR)
    else:
        runs = head_study.run_heads(repo, heads, args.seeds, out / "heads", args.overrides, args.params.name)
    summary = head_study.write_heads_summary(out, runs, bootstrap_settings(load_with_overrides(args.params, [])))
    states = ", ".join(f"{head} {record['status']}" for head, record in summary["heads"].items())
    print(f"wrote {out / 'heads.md'} and {out / 'heads.json'} ({states})")
    return 0 if all(record["status"] == "done" for record in summary["heads"].values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="diffusionret", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    summary = commands.add_parser("model-summary", help="parameter counts of the model params.yaml describes")
    summary.add_argument("--params", type=Path, default=Path("params.yaml"))
    summary.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    summary.add_argument("--json", action="store_true")
    summary.add_argument("--flops", action="store_true", help="also count FLOPs per clip / step and project GPU "
                                                              "hours (builds the model and runs it once on the CPU)")
    summary.add_argument("--benchmark", help="frames and words of this benchmark (default: the first trained)")
    summary.add_argument("--utilisation", type=float, default=0.4, help="share of the dense peak sustained")
    summary.add_argument("--epochs", type=int, default=5, help="epochs per stage of the projected workload")
    summary.add_argument("--train-captions", type=int, default=180_000, help="default: MSRVTT-9k")
    summary.add_argument("--train-videos", type=int, default=9_000)
    summary.add_argument("--test-pairs", type=int, default=1_000)
    data = commands.add_parser("data", help="benchmark files")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    check = data_commands.add_parser("check", help="read a benchmark's annotations and match its video files; "
                                                   "exit 0 when complete, 1 when videos or files are missing or "
                                                   "train and test share videos")
    check.add_argument("--benchmark", required=True, help="a benchmark defined in params.yaml")
    check.add_argument("--root", type=Path, help="the benchmark folder (default: data.raw_root/<source>)")
    check.add_argument("--params", type=Path, default=Path("params.yaml"))
    check.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    check.add_argument("--json", action="store_true")
    _add_preset_parser(commands)
    url = commands.add_parser("mlflow-url", help="print the address of the MLflow run table of the first "
                                                 "trained benchmark (classic, model-training view)")
    url.add_argument("--base", default="http://127.0.0.1:5000", help="where `mlflow ui` / `mlflow server` listens")
    url.add_argument("--params", type=Path, default=Path("params.yaml"))
    diagnose = commands.add_parser("diagnose", help="diagnostics of a synthetic evaluation cell (attribute accuracy, "
                                                    "generator-only ranks, noise levels, probes) -> "
                                                    "eval/<A>__<B>/diagnostics.json; a real benchmark is skipped")
    diagnose.add_argument("--trained", required=True, help="the benchmark the models were trained on (A)")
    diagnose.add_argument("--evaluated", required=True, help="the benchmark whose test set is diagnosed (B)")
    diagnose.add_argument("--params", type=Path, default=Path("params.yaml"))
    diagnose.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    diagnose.add_argument("--no-mlflow", action="store_true", help="do not log to the cell's evaluation run")
    diagnose.add_argument("--json", action="store_true", help="print the whole result as JSON")
    seeds = commands.add_parser("seeds", help="train and evaluate the default with several seeds (one DVC "
                                              "experiment each) and write reports/seeds.md and reports/seeds.json")
    seeds.add_argument("--seeds", type=int, nargs="+", required=True, help="e.g. --seeds 0 1 2")
    seeds.add_argument("--out", type=Path, default=Path("reports"), help="where seeds.md, seeds.json, seeds/ go")
    seeds.add_argument("--params", type=Path, default=Path("params.yaml"))
    seeds.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="more `dvc exp run -S` overrides applied to every seed")
    seeds.add_argument("--summary-only", action="store_true", help="only rebuild the table from reports/seeds/")
    heads = commands.add_parser("heads", help="train and evaluate every similarity head with and without re-ranking "
                                              "(one DVC experiment each) and write reports/heads.md and heads.json")
    heads.add_argument("--heads", nargs="+", help="default: every registered head (model.head's choices)")
    heads.add_argument("--seeds", type=int, nargs="+", help="default: the params' own seeds, no seed overrides")
    heads.add_argument("--out", type=Path, default=Path("reports"), help="where heads.md, heads.json, heads/ go")
    heads.add_argument("--params", type=Path, default=Path("params.yaml"))
    heads.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="more `dvc exp run -S` overrides applied to every head (e.g. -S train.steps=450)")
    heads.add_argument("--summary-only", action="store_true", help="only rebuild the table from reports/heads/")
    from diffusionret.search import commands as search_commands  # parsers only; heavy imports on use

    search_commands.add_commands(commands)
    args = parser.parse_args(argv)
    if args.command in search_commands.COMMANDS:
        return search_commands.run(args)
    try:
        if args.command == "model-summary":
            params = load_with_overrides(args.params, args.overrides)
            result = model_summary(params)
            if args.flops:
                result["flops"] = flops_summary(params, args.benchmark, args.utilisation, args.epochs,
                                                args.train_captions, args.train_videos, args.test_pairs)
            print(json.dumps(result, indent=2)) if args.json else _print_summary(result)
            if args.flops and not args.json:
                _print_flops(result["flops"])
        elif args.command == "data" and args.data_command == "check":
            result = data_check(load_with_overrides(args.params, args.overrides), args.benchmark, args.root,
                                args.params)
            print(json.dumps(result, indent=2)) if args.json else _print_check(result)
            return 0 if result["complete"] else 1
        elif args.command == "preset":
            return run_preset(args)
        elif args.command == "diagnose":
            return run_diagnose_command(args)
        elif args.command == "seeds":
            return run_seeds_command(args)
        elif args.command == "heads":
            return run_heads_command(args)
        elif args.command == "mlflow-url":
            params = load_with_overrides(args.params, [])
            tracking.configure(params.tracking.tracking_uri, params.tracking.artifact_root,
                               args.params.resolve().parent)
            experiment = f"{params.tracking.experiment_prefix}/{params.train.benchmarks[0]}"
            print(tracking.run_table_url(args.base, experiment))
    except (ConfigError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
