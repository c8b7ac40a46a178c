"""fasterdit: train Diffusion Transformers faster without changing the architecture.

Implements "FasterDiT: Towards Faster Diffusion Transformers Training without Architecture
Modification" (NeurIPS 2024): the same DiT, trained with a better strategy (rectified flow,
lognormal timesteps, data-std modulation, velocity-direction loss), reaches DiT's quality in
a fraction of the steps.
"""

__version__ = "0.1.0"
