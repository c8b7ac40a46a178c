"""Overrides shared by the trainer tests: the demo config shrunk to a DiT-Mi/2 on the 8×8 digits.

One thread, batch 16, a log line every step and no sampling or TensorBoard, so a few training steps take
about a second.
"""

TINY_RUN = [
    "data.source=digits",
    "model.name=DiT-Mi/2",
    "train.batch_size=16",
    "train.threads=1",
    "optim.lr=1e-3",
    "optim.warmup_steps=2",
    "train.ema_decay=0.9",
    "log.log_every=1",
    "log.sample_every=0",
    "sample.steps=2",
    "sample.per_class=1",
    "log.tensorboard=false",
    "log.progress=false",
]


def train_cli(entry: list[str], run_dir, overrides: list[str]) -> list[str]:
    """The argv of ``fasterdit train`` on the demo config with ``--set`` overrides, after ``entry``
    (e.g. ``[sys.executable, "-m", "fasterdit"]`` or a wrapper script), for tests that need a real
    process to signal or kill."""
    cmd = [*entry, "train", "--config", "demo", "--run-dir", str(run_dir), "--no-progress"]
    for a in overrides:
        cmd += ["--set", a]
    return cmd
