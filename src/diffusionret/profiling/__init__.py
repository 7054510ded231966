"""What the pipeline costs in compute, for planning runs (not imported by any DVC stage).

  flops.py  counted FLOPs of a stage-1 and a stage-2 training step and the GPU hours they imply
            (`diffusionret model-summary --flops`, benchmarks/gpu_check.py)
"""
