"""Encoders shared by every method, and the mirrored decoders that generative methods add.

- ``mlp``: the TVAE paper's two fully connected layers (input -> hidden -> output).
- ``convnet``: Liang & Li's builder net, ``add_conv(5, 5, 2, 2, 32)``, ``add_conv(5, 5, 2, 2, 64)``,
  ``add_fc(1024)``, ``add_fc(256)``: 5x5 convolutions with stride 2 and 32/64 maps, fc 1024,
  fc 256, then the embedding layer.
- ``cifar``: Hoffer & Ailon's embedding net: convolutions {5,3,3,2} with maps {64,128,256,D},
  2x2 max-pooling after the first three, ReLU between layers, no fully connected layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from dmlbench.errors import DMLBenchError
from dmlbench.registry import Registry

Shape = tuple[int, int, int]


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    encoder: Callable[[Shape, int], nn.Module]
    decoder: Callable[[Shape, int], nn.Module]
    description: str


ENCODERS: Registry[EncoderSpec] = Registry("encoder")

MLP_HIDDEN = 400  # as in the reference PyTorch VAE for MNIST (784-400-20)


def _mlp_encoder(shape: Shape, out_dim: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), MLP_HIDDEN), nn.ReLU(), nn.Linear(MLP_HIDDEN, out_dim))


def _mlp_decoder(shape: Shape, latent_dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(latent_dim, MLP_HIDDEN), nn.ReLU(), nn.Linear(MLP_HIDDEN, math.prod(shape)),
                         nn.Sigmoid(), nn.Unflatten(1, shape))


def _check_div4(shape: Shape, name: str) -> None:
    if shape[1] % 4 or shape[2] % 4:
        raise DMLBenchError(f"encoder {name!r} needs image sides divisible by 4, got {shape[1]}x{shape[2]}; "
                            "use --encoder mlp or resize the images")


def _convnet_encoder(shape: Shape, out_dim: int) -> nn.Module:
    _check_div4(shape, "convnet")
    c, h, w = shape
    return nn.Sequential(
        nn.Conv2d(c, 32, 5, stride=2, padding=2), nn.ReLU(),
        nn.Conv2d(32, 64, 5, stride=2, padding=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(64 * (h // 4) * (w // 4), 1024), nn.ReLU(),
        nn.Linear(1024, 256), nn.ReLU(), nn.Linear(256, out_dim),
    )


def _convnet_decoder(shape: Shape, latent_dim: int) -> nn.Module:
    _check_div4(shape, "convnet")
    c, h, w = shape
    return nn.Sequential(
        nn.Linear(latent_dim, 256), nn.ReLU(), nn.Linear(256, 1024), nn.ReLU(),
        nn.Linear(1024, 64 * (h // 4) * (w // 4)), nn.ReLU(), nn.Unflatten(1, (64, h // 4, w // 4)),
        nn.ConvTranspose2d(64, 32, 5, stride=2, padding=2, output_padding=1), nn.ReLU(),
        nn.ConvTranspose2d(32, c, 5, stride=2, padding=2, output_padding=1), nn.Sigmoid(),
    )


def _cifar_encoder(shape: Shape, out_dim: int) -> nn.Module:
    if shape[1:] != (32, 32):
        raise DMLBenchError(f"encoder 'cifar' needs 32x32 images, got {shape[1]}x{shape[2]}; use --encoder convnet or mlp")
    return nn.Sequential(
        nn.Conv2d(shape[0], 64, 5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(64, 128, 3), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(128, 256, 3), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(256, out_dim, 2), nn.Flatten(),
    )


def _cifar_decoder(shape: Shape, latent_dim: int) -> nn.Module:
    if shape[1:] != (32, 32):
        raise DMLBenchError(f"decoder 'cifar' needs 32x32 images, got {shape[1]}x{shape[2]}")
    return nn.Sequential(
        nn.Unflatten(1, (latent_dim, 1, 1)), nn.ConvTranspose2d(latent_dim, 256, 2), nn.ReLU(),
        nn.Upsample(scale_factor=2), nn.ConvTranspose2d(256, 128, 3), nn.ReLU(),
        nn.Upsample(scale_factor=2), nn.ConvTranspose2d(128, 64, 3), nn.ReLU(),
        nn.Upsample(scale_factor=2), nn.ConvTranspose2d(64, shape[0], 5), nn.Sigmoid(),
    )


ENCODERS.add("mlp", EncoderSpec("mlp", _mlp_encoder, _mlp_decoder, f"two fully connected layers (hidden {MLP_HIDDEN}), TVAE paper"))
ENCODERS.add("convnet", EncoderSpec("convnet", _convnet_encoder, _convnet_decoder,
                                    "conv5x5/2-32, conv5x5/2-64, fc1024, fc256 (Liang & Li)"))
ENCODERS.add("cifar", EncoderSpec("cifar", _cifar_encoder, _cifar_decoder, "four convolutions {5,3,3,2} (Hoffer & Ailon)"))


def build_encoder(name: str, shape: Shape, out_dim: int) -> nn.Module:
    return ENCODERS.get(name).encoder(tuple(shape), out_dim)


def build_decoder(name: str, shape: Shape, latent_dim: int) -> nn.Module:
    return ENCODERS.get(name).decoder(tuple(shape), latent_dim)


def check_shapes(name: str, shape: Shape, dim: int) -> None:
    """Fail early (before training) if the encoder cannot take this input."""
    with torch.no_grad():
        out = build_encoder(name, shape, dim)(torch.zeros(2, *shape))
    if out.shape != (2, dim):
        raise DMLBenchError(f"encoder {name!r} gives {tuple(out.shape[1:])} for input {shape}, expected ({dim},)")
