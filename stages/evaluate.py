"""DVC stage `evaluate@<trained>-<evaluated>`: stage-1 and re-ranked metrics of one grid cell."""

from diffusionret.pipeline.evaluate import evaluate_cell
from diffusionret.pipeline.stage import run_stage


def body(args, params, paths, root):
    metrics = evaluate_cell(args.trained, args.evaluated, params, paths, root)
    shown = {key: round(value, 2) for key, value in metrics.items() if key.endswith(("/R1", "/R5", "/MdR"))}
    print(f"evaluate@{args.trained}-{args.evaluated}: {shown}")


if __name__ == "__main__":
    run_stage(__doc__, ["trained", "evaluated"], body)
