"""The `diffusionret` console command. Sub-commands import their heavy dependencies lazily.

    diffusionret model-summary [--params params.yaml] [-S key=value ...] [--json]
    diffusionret data check --benchmark NAME [--root DIR] [--params params.yaml] [-S key=value ...] [--json]
    diffusionret index --videos DIR --model models/<benchmark> --out INDEX_DIR    (search your own videos)
    diffusionret search --index INDEX_DIR "query text" [--top 10] [--rerank/--no-rerank] [--json]
    diffusionret serve --index INDEX_DIR [--port 8765]
    diffusionret mlflow-url [--base http://127.0.0.1:5000]   (the run table of the first trained benchmark)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from diffusionret import tracking
from diffusionret.config import ConfigError, Params, params_from_dict


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `dvc exp run -S`-style `dotted.key=value` overrides (values parsed as YAML) to raw params."""
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override `{override}` must look like `section.key=value`")
        dotted, text = override.split("=", 1)
        node = raw
        parts = dotted.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"override `{dotted}`: `{part}` is not a section of params.yaml")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"override `{dotted}`: unknown key `{parts[-1]}`")
        node[parts[-1]] = yaml.safe_load(text)
    return raw


def load_with_overrides(path: Path, overrides: list[str]) -> Params:
    if not path.is_file():
        raise ConfigError(f"params file {path} not found")
    return params_from_dict(apply_overrides(yaml.safe_load(path.read_text()) or {}, overrides))


def count(module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def model_summary(params: Params) -> dict:
    """Parameter counts per module of the extractor and the generator that `params` describe."""
    import torch

    # lazy: torch + the model stack take seconds to import (measured 20 s on a loaded 2-core machine; the
    # parsers 0.4 s), and `diffusionret --help` / `data-check` never need them
    from diffusionret.model.backbone import NAMED_CLIP_CONFIGS
    from diffusionret.model.denoiser import Generator
    from diffusionret.model.extractor import build_feature_extractor

    model = params.model
    # a named config is trained from scratch with our BPE (vocabulary tokenizer_vocab_size; ids 0/1/2 are
    # start/end/pad); a checkpoint brings its own vocabulary
    special = {}
    if model.backbone in NAMED_CLIP_CONFIGS:
        special = dict(vocab_size=model.tokenizer_vocab_size, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    torch.manual_seed(0)
    extractor = build_feature_extractor(model.backbone, temporal=model.temporal,
                                        temporal_layers=model.temporal_layers, head=model.head, **special)
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
    }


def _print_summary(summary: dict) -> None:
    print(f"backbone {summary['backbone']}  (width {summary['width']}, vocabulary {summary['vocab_size']})")
    for name, value in summary["modules"].items():
        print(f"  {name:<32} {value:>14,}")
    print(f"  {'feature extractor (stage 1)':<32} {summary['extractor_total']:>14,}"
          f"  ({summary['extractor_trainable_stage1']:,} trainable: patch embedding frozen)")
    print(f"  {'generator (stage 2, trainable)':<32} {summary['generator_total']:>14,}")


def data_check(params: Params, benchmark: str, root: Path | None, params_file: Path) -> dict:
    """Read a benchmark's annotations and match its videos (no decoding); `root` defaults to its raw folder."""
    from diffusionret.pipeline.preprocess import check_benchmark_files  # lazy: only this sub-command reads videos

    settings = params.benchmark(benchmark)
    if root is None:
        raw_root = Path(params.data.raw_root)
        raw_root = raw_root if raw_root.is_absolute() else params_file.resolve().parent / raw_root
        root = raw_root / (benchmark if settings.source == "synthetic" else settings.source)
    return check_benchmark_files(benchmark, settings, root)


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
    print("complete" if result["complete"] else "INCOMPLETE")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="diffusionret", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    summary = commands.add_parser("model-summary", help="parameter counts of the model params.yaml describes")
    summary.add_argument("--params", type=Path, default=Path("params.yaml"))
    summary.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    summary.add_argument("--json", action="store_true")
    data = commands.add_parser("data", help="benchmark files")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    check = data_commands.add_parser("check", help="read a benchmark's annotations and match its video files; "
                                                   "exit 0 when complete, 1 when videos or files are missing")
    check.add_argument("--benchmark", required=True, help="a benchmark defined in params.yaml")
    check.add_argument("--root", type=Path, help="the benchmark folder (default: data.raw_root/<source>)")
    check.add_argument("--params", type=Path, default=Path("params.yaml"))
    check.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    check.add_argument("--json", action="store_true")
    url = commands.add_parser("mlflow-url", help="print the address of the MLflow run table of the first "
                                                 "trained benchmark (classic, model-training view)")
    url.add_argument("--base", default="http://127.0.0.1:5000", help="where `mlflow ui` / `mlflow server` listens")
    url.add_argument("--params", type=Path, default=Path("params.yaml"))
    from diffusionret.search import commands as search_commands  # parsers only; heavy imports on use

    search_commands.add_commands(commands)
    args = parser.parse_args(argv)
    if args.command in search_commands.COMMANDS:
        return search_commands.run(args)
    try:
        if args.command == "model-summary":
            result = model_summary(load_with_overrides(args.params, args.overrides))
            print(json.dumps(result, indent=2)) if args.json else _print_summary(result)
        elif args.command == "data" and args.data_command == "check":
            result = data_check(load_with_overrides(args.params, args.overrides), args.benchmark, args.root,
                                args.params)
            print(json.dumps(result, indent=2)) if args.json else _print_check(result)
            return 0 if result["complete"] else 1
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
