"""Training machinery shared by both stages.

  loop.py   the resumable training loop (checkpoints, validation of raw and EMA weights, best-state selection)
  optim.py  parameter groups, AdamW / BertAdam, warm-up + cosine schedules, the EMA of the weights
"""
