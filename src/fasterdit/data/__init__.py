"""Data: the embedded datasets, image folders and prepared (VAE-latent or pixel) shards."""

from fasterdit.data.embedded import EMBEDDED, INFO, EmbeddedDataset, load_embedded, split_indices

__all__ = ["EMBEDDED", "INFO", "EmbeddedDataset", "load_embedded", "split_indices"]
