"""DVC stage `preprocess@<benchmark>`: validate files, annotations in the common form, the uint8 frame cache."""

from diffusionret.pipeline.preprocess import run_preprocess
from diffusionret.pipeline.stage import run_stage


def body(args, params, paths, root):
    print(f"preprocess@{args.benchmark}: {run_preprocess(args.benchmark, params, paths, root)}")


if __name__ == "__main__":
    run_stage(__doc__, ["benchmark"], body)
