"""The building blocks a method declares and the trainer uses: its encoder (:mod:`.encoders`, the
shared networks, and :mod:`.trunks`, timm's pretrained ones) and its batch kind (:mod:`.batches`:
pairs, triplets, class-balanced groups; their vectorised draws in :mod:`.sampling`)."""
