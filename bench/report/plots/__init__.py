"""Figures from a results folder: :func:`.figures.plot_results` draws every figure for each dataset.

- :mod:`.figures`: embeddings, confusion matrices, loss curves, metric bars;
- :mod:`.tvae`: the TVAE paper's reconstructions and the triplet-weight trade-off;
- :mod:`.cd`: the critical-difference diagram of ``bench compare``;
- :mod:`.common`: what they share (figure, style, palette, reading the runs).
"""
