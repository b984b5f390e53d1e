"""Encoders shared by every method, and the mirrored decoders that generative methods add.

- ``mlp``: the TVAE paper's two fully connected layers (input -> hidden -> output).
- ``convnet``: Liang & Li's builder net, ``add_conv(5, 5, 2, 2, 32)``, ``add_conv(5, 5, 2, 2, 64)``,
  ``add_fc(1024)``, ``add_fc(256)``: 5x5 convolutions with stride 2 and 32/64 maps, fc 1024,
  fc 256, then the embedding layer.
- ``cifar``: Hoffer & Ailon's embedding net: convolutions {5,3,3,2} with maps {64,128,256,D},
  2x2 max-pooling after the first three, ReLU between layers, no fully connected layer.
- ``timm:NAME``: any timm model's pooled features, then an embedder (:mod:`dmlbench.blocks.trunks`).

Your own encoder registers like a method: :func:`register_encoder` on a builder (a function or an
``nn.Module`` class taking the input shape (C, H, W) and the output size), in a ``--plugin`` file
or a package's ``dmlbench.encoders`` entry point (``docs/add-encoder.md``). A registered encoder
that is not built in is checked once it is built (:func:`check_built`): a module with parameters,
one forward pass of an example batch of 2 images in eval and in training mode, the output's shape,
its values and its gradient, so a broken encoder is a one-line error before any training step.

The registry and each encoder's shape check import no torch: an input size an encoder cannot
take is refused before any image is decoded.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from dmlbench.core.errors import DMLBenchError, exception_line
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


def _as_spec(name: str, obj) -> EncoderSpec:
    """An entry point of the ``dmlbench.encoders`` group that names a builder (not a module) as a spec."""
    return obj if isinstance(obj, EncoderSpec) else spec_of(name, obj)


ENCODERS: Registry[EncoderSpec] = Registry("encoder", entry_point_group="dmlbench.encoders", adapt=_as_spec)
BUILTIN = ("mlp", "convnet", "cifar")  # checked by the tests; any other registered encoder by check_built
RESERVED = ("none",)  # the encoder of a method that trains nothing (raw)
DRY_BATCH = 2  # images in the example batch a registered encoder is tried on


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


def spec_of(name: str, builder: Callable, *, decoder: Callable | None = None,
            accepts: Callable[[Shape], str | None] | None = None, description: str = "") -> EncoderSpec:
    """The :class:`EncoderSpec` of ``builder`` under ``name``: its description defaults to the first line of
    the builder's docstring, its shape check to accepting every shape."""
    if not isinstance(name, str) or not name or is_timm(name) or name in RESERVED or any(c.isspace() for c in name):
        raise DMLBenchError(f"encoder name {name!r} is not allowed; choose a name without spaces that is not "
                            f"{', '.join(RESERVED)} and does not start with {TIMM_PREFIX}")
    if not callable(builder):
        raise DMLBenchError(f"encoder {name!r}: register a function or nn.Module class taking (shape, out_dim), "
                            f"not a {type(builder).__name__}")
    doc = (getattr(builder, "__doc__", None) or "").strip().splitlines()
    return EncoderSpec(name, builder, decoder, description or (doc[0] if doc else f"{name} (no description)"),
                       accepts or _any)


def register_encoder(name: str, *, decoder: Callable | None = None,
                     accepts: Callable[[Shape], str | None] | None = None, description: str = ""):
    """Decorator: ``@register_encoder("mynet")`` on a function or an ``nn.Module`` class that takes the input
    shape (C, H, W) and the output size and returns the network; ``--encoder mynet`` then builds it for
    every method. ``decoder``: (shape, latent_dim) -> the network back to images in [0, 1], for ``vae`` and
    ``tvae``; ``accepts``: shape -> why it does not fit (with the fix) or None, checked before any image is
    decoded; ``description``: what ``bench list encoders`` shows (default: the docstring's first line).
    A duplicate name raises."""

    def decorator(builder):
        ENCODERS.add(name, spec_of(name, builder, decoder=decoder, accepts=accepts, description=description))
        return builder

    return decorator


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


def is_builtin(name: str) -> bool:
    """Whether ``name`` is one of dmlbench's own encoders (a timm trunk counts as its own)."""
    return name in BUILTIN or is_timm(name) or name in RESERVED


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
    registered encoder after its shape check; one that is not built in is tried by :func:`check_built`)."""
    if is_timm(choice.name):
        from dmlbench.blocks.trunks import TimmEncoder

        return TimmEncoder(choice, shape, out_dim)
    check_input(choice.name, shape)
    return build_registered(choice.name, tuple(shape), out_dim)


def build_registered(name: str, shape: Shape, out_dim: int):
    """The network of registered encoder ``name`` for inputs of ``shape``, with ``out_dim`` outputs; one
    that is not built in is tried by :func:`check_built` first."""
    spec = ENCODERS.get(name)
    if is_builtin(name):
        return spec.encoder(tuple(shape), out_dim)
    what = f"encoder {name!r}"
    module = _build(what, spec.encoder, tuple(shape), out_dim)
    return check_built(what, module, example_batch(tuple(shape)), (out_dim,))


def check_decoder(name: str) -> None:
    """Refuse, with the fix, an encoder that has no decoder for ``vae`` and ``tvae`` (no torch)."""
    if is_timm(name):
        raise DMLBenchError(
            f"vae and tvae are not defined on a timm trunk ({name}): their decoder would have to rebuild the "
            "image from an ImageNet classifier's pooled features, and the KL term pulls the pretrained features to "
            "N(0, I); run them with encoder convnet or mlp")
    if ENCODERS.get(name).decoder is None:
        raise DMLBenchError(f"encoder {name!r} has no decoder, which vae and tvae need; register one with "
                            f"@register_encoder({name!r}, decoder=...) or run them with encoder convnet or mlp")


def build_decoder(choice, shape: Shape, latent_dim: int):
    """The decoder mirroring encoder ``choice``, from ``latent_dim`` to images of ``shape``; none for timm
    trunks. A registered decoder that is not built in is tried by :func:`check_built` on 2 latent codes."""
    check_decoder(choice.name)
    spec = ENCODERS.get(choice.name)
    if is_builtin(choice.name):
        return spec.decoder(tuple(shape), latent_dim)
    what = f"the decoder of encoder {choice.name!r}"
    module = _build(what, spec.decoder, tuple(shape), latent_dim)
    return check_built(what, module, example_batch((latent_dim,)), tuple(shape))


def example_batch(shape: tuple[int, ...]):
    """The batch a registered network is tried on: 2 inputs of ``shape``, uniform in [0, 1], from a
    generator of its own (the global random state is not touched)."""
    import torch

    return torch.rand(DRY_BATCH, *shape, generator=torch.Generator().manual_seed(0))


def _build(what: str, builder: Callable, shape: Shape, size: int):
    """Call a user's builder; whatever it raises is a one-line error naming it."""
    try:
        return builder(shape, size)
    except DMLBenchError:
        raise
    except Exception as e:  # noqa: BLE001 - a user's builder: reported in one line, with the fix
        raise DMLBenchError(f"{what} cannot be built for inputs {shape} and size {size} ({exception_line(e)}); "
                            "fix its builder, or refuse such inputs with accepts=") from None


def check_built(what: str, module, probe, out: tuple[int, ...]):
    """Try a freshly built network on the example batch ``probe`` before it trains; returns it, else a
    one-line :class:`DMLBenchError` naming ``what`` and the fix: not an ``nn.Module``, no parameters, a
    failing forward pass, outputs other than (batch, *out), NaN or inf, no gradient.

    ``module`` itself sees the batch in eval mode without gradients, which changes no weight and no
    BatchNorm statistic (and builds lazy layers); a copy of it sees it in training mode, so dropout's
    draws and the statistics' updates never reach the network that trains; the global random state
    is restored, so a run's numbers are those it would have without the check."""
    import copy

    import torch
    from torch import nn

    if not isinstance(module, nn.Module):
        raise DMLBenchError(f"{what} returned a {type(module).__name__}, not a torch nn.Module; its builder must "
                            "return the network (e.g. nn.Sequential(...))")
    if next(module.parameters(), None) is None:
        raise DMLBenchError(f"{what} has no parameters, so nothing would train; keep its layers as attributes of "
                            "the module or in nn.Sequential / nn.ModuleList, not in a Python list")
    with torch.random.fork_rng(devices=[]):
        was_training = module.training
        try:
            with torch.no_grad():
                _check_output(what, _forward(what, module.eval(), probe), out)
        finally:
            module.train(was_training)
        trained = _forward(what, copy.deepcopy(module).train(), probe)
    _check_output(what, trained, out)
    if not trained.requires_grad:
        raise DMLBenchError(f"{what} returns values that do not depend on its parameters (no gradient); do not "
                            "detach them, leave torch (.numpy()) or compute them under torch.no_grad()")
    return module


def _forward(what: str, module, probe):
    try:
        return module(probe)
    except Exception as e:  # noqa: BLE001 - a user's network: reported in one line, with the fix
        raise DMLBenchError(f"{what} fails on a batch of {len(probe)} inputs of shape {tuple(probe.shape[1:])} "
                            f"({exception_line(e)}); fix its forward for this input size, or refuse such inputs "
                            "with accepts=") from None


def _check_output(what: str, y, out: tuple[int, ...]) -> None:
    import torch

    want = ", ".join(map(str, out))
    if not isinstance(y, torch.Tensor):
        raise DMLBenchError(f"{what} returns a {type(y).__name__}, not a tensor; return the outputs alone, shaped "
                            f"(batch, {want})")
    if tuple(y.shape) != (DRY_BATCH, *out):
        fix = ("end it with a layer of that many outputs, and flatten convolutional maps first (nn.Flatten())"
               if len(out) == 1 else f"end it with nn.Unflatten(1, {out}) or a layer that gives that shape")
        raise DMLBenchError(f"{what} returns shape {tuple(y.shape)} for a batch of {DRY_BATCH}; it must return "
                            f"(batch, {want}): {fix}")
    if not torch.is_floating_point(y) or not bool(torch.isfinite(y).all()):
        raise DMLBenchError(f"{what} returns NaN, inf or non-float values on {DRY_BATCH} example inputs; check its "
                            "initialisation (e.g. weights left as torch.empty) and its dtype")
