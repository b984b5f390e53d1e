"""Encoders shared by every method, and the mirrored decoders that generative methods add.

- ``mlp``: the TVAE paper's two fully connected layers (input -> hidden -> output).
- ``convnet``: Liang & Li's builder net, ``add_conv(5, 5, 2, 2, 32)``, ``add_conv(5, 5, 2, 2, 64)``,
  ``add_fc(1024)``, ``add_fc(256)``: 5x5 convolutions with stride 2 and 32/64 maps, fc 1024,
  fc 256, then the embedding layer.
- ``cifar``: Hoffer & Ailon's embedding net: convolutions {5,3,3,2} with maps {64,128,256,D},
  2x2 max-pooling after the first three, ReLU between layers, no fully connected layer.
- ``timm:NAME``: any timm model's pooled features, then an embedder (:mod:`dmlbench.blocks.trunks`).

The registry and each encoder's shape check import no torch: an input size an encoder cannot
take is refused before any image is decoded.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from dmlbench.core.errors import DMLBenchError
from dmlbench.core.registry import Registry

Shape = tuple[int, int, int]
TIMM_PREFIX = "timm:"
MLP_HIDDEN = 400  # as in the reference PyTorch VAE for MNIST (784-400-20)


@dataclass(frozen=True)
class EncoderSpec:
    """A registered encoder: its builder, its mirrored decoder (if any), a description and its shape check."""

    name: str
    encoder: Callable  # (shape, out_dim) -> nn.Module
    decoder: Callable | None  # (shape, latent_dim) -> nn.Module
    description: str
    accepts: Callable[[Shape], str | None]  # why the shape does not fit, or None


ENCODERS: Registry[EncoderSpec] = Registry("encoder")


def _any(shape: Shape) -> str | None:
    return None


def _div4(shape: Shape) -> str | None:
    if shape[1] % 4 or shape[2] % 4 or min(shape[1:]) < 4:
        return f"needs image sides divisible by 4, got {shape[1]}x{shape[2]}; set data.resize (e.g. 64) or use encoder mlp"
    return None


def _is32(shape: Shape) -> str | None:
    if tuple(shape[1:]) != (32, 32):
        return f"needs 32x32 images, got {shape[1]}x{shape[2]}; use encoder convnet or mlp"
    return None


def _mlp_encoder(shape: Shape, out_dim: int):
    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), MLP_HIDDEN), nn.ReLU(), nn.Linear(MLP_HIDDEN, out_dim))


def _mlp_decoder(shape: Shape, latent_dim: int):
    from torch import nn

    return nn.Sequential(nn.Linear(latent_dim, MLP_HIDDEN), nn.ReLU(), nn.Linear(MLP_HIDDEN, math.prod(shape)),
                         nn.Sigmoid(), nn.Unflatten(1, shape))


def _convnet_encoder(shape: Shape, out_dim: int):
    from torch import nn

    c, h, w = shape
    return nn.Sequential(
        nn.Conv2d(c, 32, 5, stride=2, padding=2), nn.ReLU(),
        nn.Conv2d(32, 64, 5, stride=2, padding=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(64 * (h // 4) * (w // 4), 1024), nn.ReLU(),
        nn.Linear(1024, 256), nn.ReLU(), nn.Linear(256, out_dim),
    )


def _convnet_decoder(shape: Shape, latent_dim: int):
    from torch import nn

    c, h, w = shape
    return nn.Sequential(
        nn.Linear(latent_dim, 256), nn.ReLU(), nn.Linear(256, 1024), nn.ReLU(),
        nn.Linear(1024, 64 * (h // 4) * (w // 4)), nn.ReLU(), nn.Unflatten(1, (64, h // 4, w // 4)),
        nn.ConvTranspose2d(64, 32, 5, stride=2, padding=2, output_padding=1), nn.ReLU(),
        nn.ConvTranspose2d(32, c, 5, stride=2, padding=2, output_padding=1), nn.Sigmoid(),
    )


def _cifar_encoder(shape: Shape, out_dim: int):
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(shape[0], 64, 5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(64, 128, 3), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(128, 256, 3), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(256, out_dim, 2), nn.Flatten(),
    )


def _cifar_decoder(shape: Shape, latent_dim: int):
    from torch import nn

    return nn.Sequential(
        nn.Unflatten(1, (latent_dim, 1, 1)), nn.ConvTranspose2d(latent_dim, 256, 2), nn.ReLU(),
        nn.Upsample(scale_factor=2), nn.ConvTranspose2d(256, 128, 3), nn.ReLU(),
        nn.Upsample(scale_factor=2), nn.ConvTranspose2d(128, 64, 3), nn.ReLU(),
        nn.Upsample(scale_factor=2), nn.ConvTranspose2d(64, shape[0], 5), nn.Sigmoid(),
    )


ENCODERS.add("mlp", EncoderSpec("mlp", _mlp_encoder, _mlp_decoder,
                                f"two fully connected layers (hidden {MLP_HIDDEN}), TVAE paper; any input size", _any))
ENCODERS.add("convnet", EncoderSpec("convnet", _convnet_encoder, _convnet_decoder,
                                    "conv5x5/2-32, conv5x5/2-64, fc1024, fc256 (Liang & Li); sides divisible by 4", _div4))
ENCODERS.add("cifar", EncoderSpec("cifar", _cifar_encoder, _cifar_decoder,
                                  "four convolutions {5,3,3,2} (Hoffer & Ailon); 32x32 input", _is32))

TIMM_DESCRIPTION = ("timm:NAME: any timm model (e.g. timm:resnet50, timm:resnet18, timm:vit_small_patch16_224), its "
                    "pooled features then an embedder (--embedder linear|mlp) to --embedding-dim; ImageNet weights "
                    "with --pretrained (Hugging Face cache) or --weights FILE; --freeze-bn, --trunk-lr; inputs get the "
                    "trunk's own mean/std; needs the vision extra (pip install 'dmlbench[vision]')")


def is_timm(name: str) -> bool:
    """Whether ``name`` names a timm trunk (``timm:NAME``)."""
    return name.startswith(TIMM_PREFIX)


def encoder_names() -> list[str]:
    """The registered encoders' names (timm trunks are not listed)."""
    return ENCODERS.names()


def check_input(name: str, shape: Shape) -> None:
    """Refuse, with the fix, an input shape the encoder cannot take (no torch, nothing decoded)."""
    if is_timm(name) or name == "none":
        if is_timm(name) and min(shape[1:]) < 16:
            raise DMLBenchError(f"encoder {name} needs images of at least 16x16, got {shape[1]}x{shape[2]}")
        return
    why = ENCODERS.get(name).accepts(tuple(shape))
    if why:
        raise DMLBenchError(f"encoder {name!r} {why}")


def build_encoder(choice, shape: Shape, out_dim: int):
    """The encoder ``choice`` names for inputs of ``shape``, with ``out_dim`` outputs (a timm trunk, or a
    registered encoder after its shape check)."""
    if is_timm(choice.name):
        from dmlbench.blocks.trunks import TimmEncoder

        return TimmEncoder(choice, shape, out_dim)
    check_input(choice.name, shape)
    return ENCODERS.get(choice.name).encoder(tuple(shape), out_dim)


def build_decoder(choice, shape: Shape, latent_dim: int):
    """The decoder mirroring encoder ``choice``, from ``latent_dim`` to images of ``shape``; none for timm trunks."""
    if is_timm(choice.name):
        raise DMLBenchError(
            f"vae and tvae are not defined on a timm trunk ({choice.name}): their decoder would have to rebuild the "
            "image from an ImageNet classifier's pooled features, and the KL term pulls the pretrained features to "
            "N(0, I); run them with encoder convnet or mlp")
    spec = ENCODERS.get(choice.name)
    return spec.decoder(tuple(shape), latent_dim)
