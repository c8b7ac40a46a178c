"""The embedded datasets load from installed packages, offline, with a fixed stratified split."""


import numpy as np
import pytest
import torch

from fasterdit.data import EmbeddedDataset, load_embedded, split_indices
from fasterdit.errors import DataError


def test_mnist_loads_offline_with_fixed_split(no_network):
    xtr, ytr = load_embedded("mnist", "train")
    xho, yho = load_embedded("mnist", "heldout")
    assert xtr.shape == (4500, 1, 28, 28) and xho.shape == (500, 1, 28, 28)
    assert xtr.dtype == torch.float32
    assert float(xtr.min()) == -1.0 and float(xtr.max()) == 1.0
    assert torch.equal(torch.bincount(yho), torch.full((10,), 50))
    assert torch.equal(torch.bincount(ytr), torch.full((10,), 450))


def test_digits_micro_dataset(no_network):
    ds = EmbeddedDataset("digits", "all")
    assert len(ds) == 1797
    x, y = ds[0]
    assert x.shape == (1, 8, 8) and 0 <= int(y) < 10
    assert float(ds.images.min()) >= -1.0 and float(ds.images.max()) <= 1.0


def test_split_is_disjoint_and_covers():
    labels = np.repeat(np.arange(3), 25)
    tr, ho = split_indices(labels, "train"), split_indices(labels, "heldout")
    assert set(tr).isdisjoint(ho) and len(tr) + len(ho) == len(labels)


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(DataError, match="unknown embedded dataset"):
        load_embedded("cifar")
