"""Evaluation: one scoring path, retrieval metrics, post-processing, OOD detection and the metric names.

  scoring.py      similarity in blocks, re-ranking over seeded draws, per-query ranks (validation, evaluate, search)
  metrics.py      ranks, R@K / MdR / MnR, chance levels, the MSVD caption grouping
  postprocess.py  QB-Norm and dual softmax
  ood.py          per-query OOD scores, detection metrics, risk-coverage (AURC)
  cell.py         the torch scoring of one evaluation cell (stage 1, draws, querybanks, OOD evidence)
  rows.py         that cell's rows and metrics (numpy)
  names.py        the metric-name contract shared by the evaluate stage, MLflow and the report
"""
