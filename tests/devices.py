"""The devices a device-agnostic test runs on: the CPU on every machine, CUDA where a GPU is.

Why a parameter rather than a CUDA-only test: a test that is skipped on every machine CI has rots unseen
(issue 30). So each test whose assertion is not about CUDA itself takes ``device`` from :data:`DEVICES`:
its logic runs in CI on the CPU, and ``scripts/gpu_check.sh`` (``pytest -m cuda``) runs the same test on
the GPU. The checks only CUDA has (kernels, NCCL, bf16 tensor cores) carry :data:`CUDA_ONLY`.
"""

from __future__ import annotations

import pytest
import torch

NEEDS_CUDA = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh runs these on one)"
)
#: the marks of a test (or a parameter) that needs a GPU: selected by ``-m cuda``, skipped without CUDA
CUDA_ONLY = [pytest.mark.cuda, NEEDS_CUDA]

DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=CUDA_ONLY)]
