"""The run format: what a training run writes and every later command reads.

``config.py`` holds :class:`~fasterdit.run.config.RunConfig` (typed sections, YAML, ``--set``) and
``checkpoint.py`` the crash-safe checkpoint directory (atomic writes, checksums, ``latest``, keep-last-K).
Why a package of its own, below ``generate/``, ``eval/`` and ``train/``: sampling and evaluating a run
must read it without importing the trainer, and the trainer writes it without importing them.
"""
