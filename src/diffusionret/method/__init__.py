"""The method: what DiffusionRet adds on top of a contrastive retrieval model.

  diffusion.py   the noise schedule, q(x_t | x_0) and the DDIM sampler
  losses.py      the contrastive loss (stage 1) and the generation loss with its hard-negative candidate lists (stage 2)
  objectives.py  both losses on the global batch across processes and micro-batches, with their backward passes
  rerank.py      inference: each query's top-k re-ranked by a seeded DDIM sample of the generator
The networks themselves (CLIP backbone, temporal module, similarity heads, denoisers) are in `model/`.
"""
