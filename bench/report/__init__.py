"""Report: reading run folders (:mod:`.results`), the results table with its statistics
(:mod:`.table`, :mod:`.stats`), ``bench compare`` (:mod:`.compare`) and the figures
(:mod:`.plots`). Reads files only: no torch, no faiss."""
