"""What every stage shares: the one-line errors (:mod:`.errors`), the registry and plugin loading
(:mod:`.registry`), typed ``--set`` overrides (:mod:`.params`), search-space types (:mod:`.space`),
crash-safe files (:mod:`.io`), file locks (:mod:`.locks`) and process settings (:mod:`.runtime`:
threads, devices, seeds, interrupts). Imports no torch, and nothing from the stages above it."""

VERSION = "0.1.0"  # dmlbench's version, recorded with every result (dmlbench.__version__)
