"""Models: the DiT of Peebles & Xie with official parameter names, its named configs, a loader for
official checkpoints and an analytic cost model (``fasterdit.models.cost``)."""

from fasterdit.models.cost import CostEstimate, estimate_cost
from fasterdit.models.dit import CONFIGS, DiT, DiT_models, DiTConfig, create_model
from fasterdit.models.official import infer_official_config, load_official_checkpoint

__all__ = [
    "CONFIGS",
    "CostEstimate",
    "DiT",
    "DiTConfig",
    "DiT_models",
    "create_model",
    "estimate_cost",
    "infer_official_config",
    "load_official_checkpoint",
]
