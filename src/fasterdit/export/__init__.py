"""Exports of trained runs to other libraries' formats (``fasterdit export``): diffusers' pipeline folder.

Why a floor of its own, above ``generate/``: an export reads a run exactly as ``fasterdit sample`` does
(:func:`fasterdit.generate.loading.load_trained`), and nothing below it needs to know about exports;
reading a diffusers folder back is ``generate/``'s (through :mod:`fasterdit.models.diffusers_dit`).
"""
