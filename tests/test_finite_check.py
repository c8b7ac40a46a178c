"""The finite check before every save (issue 30, item 4): tensors of any floating dtype, on several devices.

Why devices mix: non-fused AdamW keeps its step counts on the CPU while the weights are on CUDA, and a
reduction or a stack takes tensors of one device only (``optim.fused=false`` on CUDA crashed the first
checkpoint). The check reduces each device's tensors on that device and combines the verdicts on the CPU,
one copy per device. Without a GPU the second device is ``meta`` (a device without data: it shows the
grouping and where each reduction runs, not values); the verdicts are checked on CPU tensors of every
floating dtype here, and on CUDA + CPU by tests/test_cuda.py (a non-fused run through its saves).
"""

from __future__ import annotations

import math

import pytest
import torch

from devices import DEVICES
from fasterdit.run.checkpoint import by_device, nonfinite_flags, nonfinite_names

CPU, META = torch.device("cpu"), torch.device("meta")


def test_tensors_are_grouped_by_device_in_order():
    tensors = [
        torch.ones(3),
        torch.ones(2, device="meta"),
        torch.ones((), dtype=torch.float64),
        torch.ones(4, dtype=torch.float16, device="meta"),
        torch.ones(1),
    ]
    assert by_device(tensors) == {CPU: [0, 2, 4], META: [1, 3]}
    assert by_device([]) == {}


def test_each_device_is_reduced_on_that_device():
    tensors = [
        torch.ones(5, dtype=dt, device="meta") for dt in (torch.float16, torch.bfloat16, torch.float64)
    ]
    flags = nonfinite_flags(tensors)
    assert flags.device == META and flags.dtype == torch.bool and flags.shape == (3,)


def _named(device: str) -> dict[str, torch.Tensor]:
    """Finite and non-finite tensors of every floating dtype (and an integer one, which is never checked)."""
    big = torch.tensor([1e300, -1e300], dtype=torch.float64)  # finite, though past float32's range
    return {
        "f16 finite": torch.tensor([65504.0, -1.0], dtype=torch.float16),  # float16's largest value
        "f16 inf": torch.tensor([1.0, math.inf], dtype=torch.float16),
        "bf16 nan": torch.tensor([math.nan, 2.0], dtype=torch.bfloat16),
        "bf16 finite": torch.full((3, 3), 3e38, dtype=torch.bfloat16),
        "f32 -inf at the end": torch.cat([torch.zeros(1000), torch.tensor([-math.inf])]),
        "f32 finite": torch.randn(7, 5),
        "f64 finite": big,
        "f64 nan": torch.tensor([math.nan], dtype=torch.float64),
        "step count": torch.tensor(3.0),  # AdamW's (non-fused: on the CPU, whatever the device)
        "empty": torch.zeros(0),
        "integers": torch.tensor([1, 2]),
    } | {"on the device": torch.tensor([math.inf, 0.0], device=device)}


@pytest.mark.parametrize("device", DEVICES)
def test_nonfinite_names_across_dtypes_and_devices(device):
    named = _named(device)
    # the reference: each tensor's values, one by one, in float64 on the host
    expected = [
        k
        for k, v in named.items()
        if v.is_floating_point() and not bool(torch.isfinite(v.double().cpu()).all())
    ]
    assert expected == ["f16 inf", "bf16 nan", "f32 -inf at the end", "f64 nan", "on the device"]
    assert nonfinite_names(named) == expected
    del named["on the device"]
    assert nonfinite_names({k: v for k, v in named.items() if k not in expected}) == []
    assert nonfinite_names({}) == []
