"""DVC stage `train_gen@<benchmark>` (stage 2): the two denoisers on cached features, with `accelerate launch`."""

from diffusionret.pipeline.stage import run_stage
from diffusionret.pipeline.train_gen import train_gen


def body(args, params, paths, root):
    result = train_gen(args.benchmark, params, paths, root)
    print(f"train_gen@{args.benchmark}: {result}")


if __name__ == "__main__":
    run_stage(__doc__, ["benchmark"], body)
