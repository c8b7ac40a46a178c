"""A training step never makes the host wait for the device (issue 30, item 2).

Why it matters: the trainer queues step k+1 while the GPU still runs step k and reads step k's numbers
one step late (train/step.py, train/monitor.py). One host sync inside the step -- ``.item()``, ``bool()``
of a device tensor, or a blocking copy of a host tensor to the device (a copy from pageable memory waits
for the whole queued stream) -- drains that queue and costs the look-ahead.

On the CPU a sync costs nothing, so the test counts calls instead of measuring time: during one
``train_step`` after a warm-up step it patches the ``Tensor`` methods that read a device tensor on the
host, and every copy of a CPU tensor to another device, and asserts that none was called. One more rule
makes the copy check bite on a CPU-only machine, where every tensor is on the CPU: a ``.to(device)`` of a
CPU tensor that existed before the step (a cached constant, such as the DDPM posterior tables, sent again
every call) counts too, since on CUDA it is a host-to-device copy each step. The same test runs on CUDA
(``pytest -m cuda``, scripts/gpu_check.sh), where the device rule alone is exact.
"""

from __future__ import annotations

import gc
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from devices import DEVICES
from fasterdit.run.config import load_config
from fasterdit.train.step import train_step
from fasterdit.train.trainer import Trainer
from tiny_run import TINY_RUN

#: ``Tensor`` methods that read a tensor's values on the host (on CUDA: wait for the stream to get there)
READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__", "__array__")

RECIPES = {
    "dit": ["recipe=dit"],  # the VB term: the posterior tables, every micro-step
    "sit": ["recipe=sit"],
    "fasterdit": ["recipe=fasterdit"],
    # the edm-lognormal law on ddpm-linear inverts λ(t) by Newton's method in every draw
    "edm-lognormal@ddpm-linear": [
        "recipe=dit",
        "recipe.timesteps=edm-lognormal",
        "recipe.timestep_params={}",
    ],
}


def _caller() -> str:
    """``file:line`` of the code that made the call (the frame below the counting wrapper)."""
    frame = traceback.extract_stack()[-3]
    return f"{frame.filename.split('site-packages/')[-1].split('src/')[-1]}:{frame.lineno}"


def _device_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.device | None:
    """The device a ``Tensor.to`` call names (positionally, by keyword, or as another tensor's), if any."""
    target = kwargs.get("device", args[0] if args else None)
    if isinstance(target, torch.Tensor):
        return target.device
    if isinstance(target, (torch.device, str, int)):
        return torch.device(target)
    return None


class HostSyncs:
    """While entered, records every host read of a tensor (:data:`READS`) and every copy of a CPU tensor
    to another device, or of a CPU tensor that existed on entry (see the module docstring). Non-blocking
    copies from pinned memory are not syncs and are not recorded."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self._saved: list[tuple[Any, str, Any, bool]] = []
        self._before: dict[int, torch.Tensor] = {}

    def __enter__(self) -> HostSyncs:
        self._before = {id(o): o for o in gc.get_objects() if issubclass(type(o), torch.Tensor)}
        for name in READS:
            self._patch(torch.Tensor, name, self._reading(name))
        self._patch(torch.Tensor, "to", self._moving)
        self._patch(torch.Tensor, "copy_", self._copying)
        for name in ("tensor", "as_tensor"):
            self._patch(torch, name, self._creating(name))
        return self

    def __exit__(self, *exc: object) -> None:
        while self._saved:
            owner, name, original, own = self._saved.pop()
            if own:
                setattr(owner, name, original)
            else:  # inherited (torch.Tensor from its C base): uncover it again
                delattr(owner, name)
        self._before = {}

    def _patch(self, owner: Any, name: str, make: Callable[[Any], Callable[..., Any]]) -> None:
        original = getattr(owner, name)
        self._saved.append((owner, name, original, name in vars(owner)))
        setattr(owner, name, make(original))

    def _reading(self, name: str) -> Callable[[Any], Callable[..., Any]]:
        def make(original: Callable[..., Any]) -> Callable[..., Any]:
            def read(t: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
                self.calls.append(f"Tensor.{name} at {_caller()}")
                return original(t, *args, **kwargs)

            return read

        return make

    def _blocking(self, src: torch.Tensor, target: torch.device, non_blocking: bool) -> bool:
        if src.device.type != "cpu" or (non_blocking and src.is_pinned()):
            return False
        return target.type != "cpu" or id(src) in self._before

    def _moving(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def to(t: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            target = _device_of(args, kwargs)
            if target is not None and self._blocking(t, target, bool(kwargs.get("non_blocking", False))):
                self.calls.append(f"Tensor.to({target}) of a {tuple(t.shape)} CPU tensor at {_caller()}")
            return original(t, *args, **kwargs)

        return to

    def _copying(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def copy_(dst: torch.Tensor, src: torch.Tensor, non_blocking: bool = False) -> Any:
            if dst.device.type != "cpu" and self._blocking(src, dst.device, non_blocking):
                self.calls.append(f"Tensor.copy_ of a CPU tensor to {dst.device} at {_caller()}")
            return original(dst, src, non_blocking)

        return copy_

    def _creating(self, name: str) -> Callable[[Any], Callable[..., Any]]:
        def make(original: Callable[..., Any]) -> Callable[..., Any]:
            def create(*args: Any, **kwargs: Any) -> Any:
                device = kwargs.get("device")
                if device is not None and torch.device(device).type != "cpu":
                    self.calls.append(f"torch.{name}(..., device={device}) at {_caller()}")
                return original(*args, **kwargs)

            return create

        return make


def _trainer(run_dir: Path, device: str, sets: list[str]) -> Trainer:
    cfg = load_config("demo", [*TINY_RUN, f"train.device={device}", "train.steps=2", *sets])
    tr = Trainer(cfg, run_dir, install_signal_handlers=False)
    tr._setup()
    return tr


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("recipe", RECIPES)
def test_a_training_step_makes_no_host_sync(tmp_path, device, recipe):
    tr = _trainer(tmp_path, device, RECIPES[recipe])
    assert tr.parts is not None and tr.parts.fused, "the sync-free step is the fused-AdamW one"
    batch = tr.ctx.cfg.train.batch_size
    train_step(tr.ctx, tr.parts, 0, 0, tr.stop)  # warm-up: the per-device caches fill here, once
    with HostSyncs() as syncs:
        queued = train_step(tr.ctx, tr.parts, 1, batch, tr.stop)
    assert syncs.calls == [], "\n".join(syncs.calls)
    # the step did run, and its stats are readable afterwards (the monitor's lagged read)
    assert queued.step == 1 and bool(torch.isfinite(queued.values).all())


def test_the_counter_sees_each_kind_of_sync():
    """Each rule of :class:`HostSyncs`, including the one that makes a cached table re-sent each call
    visible on a CPU-only machine."""
    table = torch.linspace(0.0, 1.0, 10, dtype=torch.float64)  # exists before: a cached host constant
    flag = torch.ones(())
    methods = {name: vars(torch.Tensor).get(name) for name in (*READS, "to", "copy_")}
    with HostSyncs() as syncs:
        fresh = torch.arange(3.0)
        fresh.to("cpu")  # made inside, same device: not a copy
        fresh.to(torch.float64)  # a dtype, no device
        table.to(torch.device("cpu"))  # the old dit_vb_terms: the table sent again
        table.to(fresh)  # the same, by another tensor's device
        bool(flag)
        float(flag)
        flag.item()
        fresh.tolist()
    assert [c.split(" at ")[0] for c in syncs.calls] == [
        "Tensor.to(cpu) of a (10,) CPU tensor",
        "Tensor.to(cpu) of a (10,) CPU tensor",
        "Tensor.__bool__",
        "Tensor.__float__",
        "Tensor.item",
        "Tensor.tolist",
    ]
    assert all("test_host_sync.py:" in c for c in syncs.calls), syncs.calls  # each names its caller
    assert {name: vars(torch.Tensor).get(name) for name in methods} == methods  # the patches are undone
