"""The `diffusionret` console command. Sub-commands import their heavy dependencies lazily.

    diffusionret model-summary [--params params.yaml] [-S key=value ...] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="diffusionret", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    summary = commands.add_parser("model-summary", help="parameter counts of the model params.yaml describes")
    summary.add_argument("--params", type=Path, default=Path("params.yaml"))
    summary.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    summary.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "model-summary":
            result = model_summary(load_with_overrides(args.params, args.overrides))
            print(json.dumps(result, indent=2)) if args.json else _print_summary(result)
    except (ConfigError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
