"""DVC stage `evaluate@<trained>-<evaluated>`: every row (stage 1, re-ranked, QB-Norm, DSL) of one grid cell."""

from diffusionret.pipeline.evaluate import evaluate_cell
from diffusionret.pipeline.stage import run_stage


def body(args, params, paths, root):
    metrics = evaluate_cell(args.trained, args.evaluated, params, paths, root)
    shown = {key: round(value, 2) for key, value in metrics.items()
             if key.endswith("/R1") and not key.startswith("chance")}
    print(f"evaluate@{args.trained}-{args.evaluated} (R@1, mean over {params.eval.num_samples} draws "
          f"where re-ranked): {shown}")


if __name__ == "__main__":
    run_stage(__doc__, ["trained", "evaluated"], body)
