"""``train.compile``: the compiled training step trains the same weights as the eager one.

The compiled path traces the whole loss (noising, DiT, target, MSE, direction cosine; the VB term for
the ``dit`` recipe) as one function. ``aot_eager`` runs dynamo and AOTAutograd (the same graph capture
and backward derivation inductor consumes) without code generation, so it is fast enough for CI; the
reference is the eager trainer at the same seed.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from fasterdit.run import checkpoint as ck
from fasterdit.run.config import load_config
from fasterdit.train.trainer import Trainer
from tiny_run import TINY_RUN

BASE = [*TINY_RUN, "train.steps=4"]


def train(run_dir, *extra: str) -> tuple[Trainer, dict[str, torch.Tensor]]:
    tr = Trainer(load_config("demo", [*BASE, *extra]), run_dir, install_signal_handlers=False)
    tr.run()
    return tr, ck.load_tensors(ck.latest_checkpoint(run_dir), "model")


@pytest.mark.parametrize("recipe", ["fasterdit", "dit"])
def test_compiled_step_trains_the_same_weights_as_eager(tmp_path, recipe):
    torch._dynamo.reset()
    _, eager = train(tmp_path / "eager", f"recipe={recipe}")
    counters.clear()
    tr, compiled = train(
        tmp_path / "compiled", f"recipe={recipe}", "train.compile=true", "train.compile_backend=aot_eager"
    )
    assert tr.parts.compiled, "one process: the loss and the model are compiled together"
    # compiled once: the loss's per-device constants (scaling, the VB term's posterior tables) were in
    # place before the first call, so no guard failed on the second
    assert counters["stats"]["unique_graphs"] == 1
    assert eager.keys() == compiled.keys()
    for k in eager:
        torch.testing.assert_close(compiled[k], eager[k], rtol=1e-4, atol=1e-5, msg=k)
    # not vacuous: the output layer starts at exactly zero (adaLN-Zero) and has been trained
    assert float(eager["final_layer.linear.weight"].abs().sum()) > 0


def test_bad_compile_backend_names_the_field():
    from fasterdit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"train\.compile_backend"):
        load_config("demo", [*BASE, "train.compile_backend="])
