"""The building blocks a method declares and the trainer uses: its encoder (:mod:`.encoders`, the
shared networks, and :mod:`.trunks`, timm's pretrained ones) and its batch kind (:mod:`.batches`:
pairs, triplets, class-balanced groups; their vectorised draws in :mod:`.sampling`).

What an encoder's author imports is here: ``from dmlbench.blocks import register_encoder``
(``docs/add-encoder.md``).
"""

from __future__ import annotations

from dmlbench.blocks.encoders import ENCODERS, EncoderSpec, register_encoder

__all__ = ["ENCODERS", "EncoderSpec", "register_encoder"]
