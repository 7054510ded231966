"""DVC stage `train_estimator@<benchmark>`: HBI's Banzhaf estimator (a note only, in seconds, for other heads)."""

from diffusionret.pipeline.stage import run_stage
from diffusionret.pipeline.train_estimator import train_estimator


def body(args, params, paths, root):
    print(f"train_estimator@{args.benchmark}: {train_estimator(args.benchmark, params, paths)}")


if __name__ == "__main__":
    run_stage(__doc__, ["benchmark"], body)
