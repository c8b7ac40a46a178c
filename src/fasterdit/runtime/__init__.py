"""The process runtime shared by ``data/``, ``train/``, ``eval/`` and ``commands/``: durable files and the
torchrun process group with its device.

Why a floor of its own, below ``data/`` and ``train/``: ``fasterdit prepare`` (data) and training,
sampling and evaluation (train, eval) all run as one process or as every rank of a torchrun job and all
write files that must survive a crash. One implementation of each idea keeps them from drifting apart;
each caller states its policy (which backend, which timeout, which group) through parameters.
"""
