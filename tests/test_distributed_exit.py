"""Leaving the process group frees it, under the real torchrun CLI (2 processes, gloo).

Why it matters: a group that outlives ``destroy_process_group`` keeps gloo's worker threads alive into
interpreter shutdown, where one of them frees its last collective's tensors and aborts the rank (SIGABRT,
"terminate called without an active exception") after its work is done; torchrun then reports the whole
job as failed. It happened when torch modules that take ``group.WORLD`` as a default argument value were
first imported after the group existed -- which building the first model does (``torch._dynamo``). The
abort itself is a race (4 of 55 two-process ``eval`` runs on a loaded 2-core machine); the kept-alive
group is deterministic, so that is what this asserts: gloo's threads are gone once :func:`cleanup`
returns.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")

WORKER = textwrap.dedent(
    """
    import os, sys, torch
    from fasterdit.models.dit import create_model
    from fasterdit.runtime.distributed import barrier, cleanup, gather_objects, init_distributed

    def threads():
        return len(os.listdir("/proc/self/task"))

    info = init_distributed("cpu")
    assert info.world_size == 2 and info.backend == "gloo"
    with torch.device("meta"):  # as checkpoint loading builds its model: the first one imports torch._dynamo
        create_model("DiT-Ti/4", input_size=8, in_channels=1, num_classes=10)
    assert sum(gather_objects(info.rank)) == 1
    barrier()
    inside = threads()
    cleanup(synchronize=True)
    left = threads()
    print(f"rank {info.rank}: {inside} threads in the group, {left} after leaving it", flush=True)
    sys.exit(0 if left < inside else 3)
    """
)


def test_leaving_the_group_ends_its_threads(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("after leaving it") == 2
