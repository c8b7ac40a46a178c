"""Using a trained model: load any checkpoint, resolve the sampling defaults, and sample it.

One path for every command that samples -- training's grids and ``eval.every``, ``fasterdit sample`` and
``fasterdit eval``, on any number of processes:

* ``loading.py``: a run dir, one of our checkpoints or an official DiT/SiT ``.pt`` -> :class:`LoadedModel`
  (the model, its recipe, the run config, and a typed :class:`DataDescription`);
* ``defaults.py``: the one precedence of sampling defaults (flag > the run's ``eval`` section > its
  ``sample`` section > the recipe or the official family);
* ``seeds.py``: sample i's noise, label and step noise from (seed, i) only;
* ``job.py``: the sampling of an index range, the resumable distributed job into an ``.npz``, and its
  in-memory sibling; ``npz.py`` and ``grid.py`` the writers; ``provenance.py`` what the sidecar records;
* ``checks.py``: argument checks before a model is loaded; ``cost.py``: a job's ``--dry-run`` cost.
"""

from fasterdit.generate.loading import DataDescription, LoadedModel, load_model, load_trained

__all__ = ["DataDescription", "LoadedModel", "load_model", "load_trained"]
