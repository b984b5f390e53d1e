"""Pretrained trunks from timm: ``--encoder timm:NAME``.

The trunk's pooled features (``num_classes=0``) feed an embedder (one linear layer, or a small
MLP) to the embedding size; the same module serves every method. Inputs arrive as pixels in
[0, 1] and are normalised here with the trunk's own ``pretrained_cfg`` mean and std.

Weights: ``pretrained=True`` goes through timm's own mechanism (the Hugging Face cache, fetched
if the hub answers; in seconds, one line naming ``--weights`` if it does not); ``--weights FILE`` loads a local file through timm's ``pretrained_cfg_overlay``.
Offline with nothing cached is a one-line error naming where the file goes; there is never a
silent fallback to random weights. The source and SHA-256 of the weights are recorded.

``freeze_bn`` (MLRC) keeps every BatchNorm layer in eval mode and its affine parameters fixed.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from dmlbench.core.errors import DMLBenchError
from dmlbench.core.io import file_digest

INSTALL_HINT = "pip install 'dmlbench[vision]' (timm, with a torchvision built for your torch)"


def import_timm():
    """The timm module; a one-line :class:`DMLBenchError` with the fix where it is missing or does not import."""
    try:
        import timm
    except ImportError:
        raise DMLBenchError(f"encoder timm:... needs timm, which is not installed; {INSTALL_HINT}") from None
    except Exception as e:  # noqa: BLE001 - e.g. a torchvision wheel built for another torch
        first = str(e).splitlines()[0][:160] if str(e) else ""
        raise DMLBenchError(f"timm does not import here ({type(e).__name__}: {first}); timm needs a torchvision "
                            "that matches this torch (on CPU: pip install torch torchvision --index-url "
                            "https://download.pytorch.org/whl/cpu)") from None
    return timm


def model_name(encoder: str) -> str:
    """The timm model name of an encoder name ``timm:NAME``."""
    return encoder.partition(":")[2]


def default_input_size(encoder: str) -> tuple[int, int]:
    """(H, W) the trunk was trained at, from timm's pretrained config (no weights loaded)."""
    timm = import_timm()
    name = model_name(encoder)
    try:
        cfg = timm.models.get_pretrained_cfg(name) or timm.create_model(name, pretrained=False).pretrained_cfg
    except Exception as e:  # noqa: BLE001 - unknown model names
        raise DMLBenchError(f"timm has no model {name!r} ({type(e).__name__}); `timm.list_models()` lists them") from None
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    return tuple(cfg.get("input_size", (3, 224, 224))[1:])


def sha256(path: Path) -> str:
    """The SHA-256 of a weights file, recorded with the run."""
    return file_digest(path, "sha256")


def _hf_cached_file(cfg: dict) -> Path | None:
    repo = cfg.get("hf_hub_id")
    if not repo:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for fname in (cfg.get("hf_hub_filename"), "model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        if fname:
            p = try_to_load_from_cache(repo, fname)
            if isinstance(p, str) and os.path.isfile(p):
                return Path(p)
    return None


HUB_TIMEOUT_S = 3.0  # an unreachable hub is refused after this, not after huggingface_hub's minute of retries


def hub_reachable(timeout: float = HUB_TIMEOUT_S) -> bool:
    """Whether the Hugging Face hub answers an HTTP request within ``timeout`` (False at once where
    HF_HUB_OFFLINE is set). A request, not a bare connection, and a hub's answer, not an error page:
    a proxy may accept any connection and answer 404 for any host."""
    import urllib.error
    import urllib.request

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{endpoint}/api/models?limit=1", method="HEAD"),
                                    timeout=timeout):
            return True
    except urllib.error.HTTPError as e:
        return e.code == 429  # the hub, rate-limiting; any other error status is no hub to download from
    except (OSError, ValueError):
        return False


class TimmEncoder(nn.Module):
    """A timm trunk's pooled features, from inputs normalised with its own mean and std, then an embedder."""

    is_trunk_holder = True

    def __init__(self, choice, shape: tuple[int, int, int], out_dim: int):
        super().__init__()
        timm = import_timm()
        name = model_name(choice.name)
        pretrained = bool(choice.pretrained or choice.weights)
        kwargs: dict = {"num_classes": 0}
        if choice.weights:
            path = Path(choice.weights).expanduser()
            if not path.is_file():
                raise DMLBenchError(f"weights file {path} does not exist; give a .safetensors or .pth state dict of {name}")
            kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
        elif pretrained:
            # Weights already in the Hugging Face cache load from there, without asking the hub; none
            # there and no hub is one line in seconds, naming --weights (huggingface_hub would retry
            # for a minute before failing).
            hub_cfg = timm.models.get_pretrained_cfg(name)
            cached = _hf_cached_file(hub_cfg.to_dict() if hasattr(hub_cfg, "to_dict") else dict(hub_cfg or {}))
            if cached is not None:
                kwargs["pretrained_cfg_overlay"] = {"file": str(cached)}
            elif not hub_reachable():
                raise self._weights_error(name, ConnectionError("the Hugging Face hub cannot be reached and no "
                                                                "weights are in its cache"))
        try:
            self.trunk = timm.create_model(name, pretrained=pretrained, **kwargs)
        except RuntimeError as e:
            if "Unknown model" in str(e):
                raise DMLBenchError(f"timm has no model {name!r}; `timm.list_models()` lists them") from None
            raise self._weights_error(name, e) from None
        except Exception as e:  # noqa: BLE001 - the hub unreachable, nothing cached, a bad weights file
            raise self._weights_error(name, e) from None
        cfg = dict(self.trunk.pretrained_cfg)
        self.weights_info = {"model": name, "pretrained": pretrained}
        if pretrained:
            if choice.weights:
                self.weights_info.update(source=f"file:{Path(choice.weights).expanduser()}",
                                         sha256=sha256(Path(choice.weights).expanduser()))
            else:
                cached = _hf_cached_file(cfg)
                if not (cfg.get("hf_hub_id") or cfg.get("url")):
                    raise DMLBenchError(f"timm has no pretrained weights for {name}; give --weights FILE or leave "
                                        "out --pretrained")
                self.weights_info.update(source=f"hf:{cfg.get('hf_hub_id') or cfg.get('url')}",
                                         sha256=sha256(cached) if cached else None)
        self.input_size = tuple(cfg.get("input_size", (3, 224, 224))[1:])
        in_chans = cfg.get("input_size", (3,))[0]
        self.repeat = in_chans if shape[0] == 1 and in_chans == 3 else 1
        mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        nf = self.trunk.num_features
        if choice.embedder == "mlp":
            self.embedder = nn.Sequential(nn.Linear(nf, 512), nn.ReLU(), nn.Linear(512, out_dim))
        else:
            self.embedder = nn.Linear(nf, out_dim)
        self.freeze_bn = bool(choice.freeze_bn)
        if self.freeze_bn:
            for m in self._batchnorms():
                for p in m.parameters():
                    p.requires_grad_(False)
            self.train(self.training)

    @staticmethod
    def _weights_error(name: str, e: Exception) -> DMLBenchError:
        hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
            os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub")
        first = (str(e).splitlines() or [""])[0]
        if len(first) > 160:  # cut at a word, not inside one
            first = first[:160].rsplit(" ", 1)[0] + " ..."
        return DMLBenchError(
            f"no ImageNet weights for {name}: {type(e).__name__}: {first}; put them in the Hugging Face cache "
            f"({hub}, e.g. by running timm.create_model('{name}', pretrained=True) where the hub is reachable and "
            "copying that folder), or give --weights FILE (a .safetensors or .pth state dict)")

    def _batchnorms(self):
        return [m for m in self.trunk.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def train(self, mode: bool = True):
        """Set training mode as ``nn.Module`` does, keeping BatchNorm layers in eval mode with ``freeze_bn``."""
        super().train(mode)
        if self.freeze_bn:
            for m in self._batchnorms():
                m.eval()  # running statistics stay the pretrained ones
        return self

    def trunk_parameters(self):
        """The trunk's parameters (the embedder's excluded), e.g. for a separate trunk learning rate."""
        return self.trunk.parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings of images in [0, 1] (grey ones repeated to the trunk's 3 channels)."""
        if self.repeat > 1:
            x = x.expand(-1, self.repeat, -1, -1)
        x = (x - self.mean) / self.std
        return self.embedder(self.trunk(x))


def import_check() -> str | None:
    """Why timm cannot be used here, or None."""
    try:
        import_timm()
    except DMLBenchError as e:
        return str(e)
    return None

