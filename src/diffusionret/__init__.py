"""DiffusionRet: generative text-video retrieval with a diffusion model (Jin et al., ICCV 2023).

The library is importable without the training machinery; heavy imports (torch, transformers,
mlflow) happen inside the modules that need them.
"""

__version__ = "0.1.0"
