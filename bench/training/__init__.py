"""Training: the one trainer (:mod:`.trainer`, which knows no method) and what it feeds a method
with: the batch kinds and their vectorised draws (:mod:`.batches`, :mod:`.sampling`), uint8
images turned into float on the device and augmented there (:mod:`.inputs`, :mod:`.augment`),
and the shared encoders (:mod:`.encoders`, timm trunks in :mod:`.trunks`). Nothing here imports
the evaluation or the report."""
