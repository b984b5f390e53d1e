"""Running: a suite resolved from presets, files and flags (:mod:`.presets`, :mod:`.suite`),
checked before anything runs (:mod:`.checks`), expanded into runs that the runner makes one at a
time into their folders (:mod:`.runner`, the data each sees in :mod:`.rundata`), under the one
results layout (:mod:`.layout`) and with the provenance of every result (:mod:`.provenance`).
The run config itself is :mod:`.config`. Where runs are made is the executors' business."""
