"""Training: the one trainer (:mod:`.trainer`, which knows no method and takes a small
:class:`~.config.TrainConfig`), and what feeds it: uint8 images turned into float on the run's
device and augmented there (:mod:`.inputs`, :mod:`.augment`). A method's batch kind and encoder
are its building blocks (:mod:`dmlbench.blocks`). Nothing here imports the evaluation or the report."""
