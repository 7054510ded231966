"""DVC stage `train_disc@<benchmark>` (stage 1): the feature extractor, with `accelerate launch`."""

from diffusionret.pipeline.stage import run_stage
from diffusionret.pipeline.train_disc import train_disc


def body(args, params, paths, root):
    result = train_disc(args.benchmark, params, paths, root)
    print(f"train_disc@{args.benchmark}: {result}")


if __name__ == "__main__":
    run_stage(__doc__, ["benchmark"], body)
