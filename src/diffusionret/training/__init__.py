"""Training machinery shared by both stages.

  loop.py         the training loop (steps, gradient averaging, validation of raw and EMA weights, best state, logging)
  state.py        resumable state on disk, one run per parameter fingerprint (TrainingState, Progress)
  optim.py        parameter groups, AdamW / BertAdam, warm-up + cosine schedules, the EMA of the weights
  state_files.py  state dicts on disk without pickle (tensors in safetensors, the rest in JSON), RNG states
"""
