"""``bench export``: a trained run's embedder alone, for use on new images.

The file holds the encoder and its embedding head (for VAE and TVAE, the posterior mean), and in
its metadata what the images must go through first: the stored image size, the pixel scale, the
normalisation, the evaluation crop and the encoder's input size. Three formats:

- ``safetensors``: the weights and the metadata; :func:`load_embedder` rebuilds the method with
  dmlbench (a plugin method's module must be importable);
- ``torchscript``: a traced module, loadable with torch alone (the metadata in ``dmlbench.json``);
- ``onnx``: for onnxruntime and other runtimes (the metadata in the model's ``metadata_props``).

:func:`load_embedder` returns ``(module, preprocess)``: ``preprocess`` takes a PIL image, a uint8
array (H, W[, C]), (C, H, W) or a batch (N, C, H, W) and returns the float batch the module takes.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dmlbench.core.errors import DMLBenchError
from dmlbench.core.io import CorruptFileError, read_json, torch_load
from dmlbench.methods import EncoderChoice, get_method
from dmlbench.running import layout
from dmlbench.running.config import RunConfig
from dmlbench.running.rundata import input_shape, load_data
from dmlbench.training.augment import eval_transform

FORMATS = {"safetensors": ".safetensors", "torchscript": ".pt", "onnx": ".onnx"}
META_KEY = "dmlbench"


class Embedder(nn.Module):
    """A method's embedding path as a module: float images (N, C, H, W) -> embeddings (N, D)."""

    def __init__(self, method):
        super().__init__()
        self.method = method
        self.net = method.net  # (registered here, so the module's state is the method's networks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings of preprocessed images."""
        return self.method.embed(x)


def _meta(cfg: dict, data: dict) -> dict:
    """What rebuilds the method, and what an image goes through before it."""
    run_cfg = RunConfig(**{k: v for k, v in cfg.items() if k in RunConfig.__dataclass_fields__})
    stored = list(data["input_shape"])
    scale = data.get("scale")
    if scale is None:  # a run made before config.json kept the scale: read it from the data's loader
        scale = float(load_data(run_cfg).scale)
    return {"format": "dmlbench-embedder/1", "method": cfg["method"], "method_params": cfg.get("method_params", {}),
            "encoder": {"name": cfg["encoder"], "embedder": cfg.get("embedder", "linear"),
                        "freeze_bn": cfg.get("freeze_bn", False)},
            "embedding_dim": cfg.get("embedding_dim") or 1, "num_classes": data.get("train_classes") or 2,
            "input_shape": list(input_shape(run_cfg, tuple(stored))),
            "preprocess": {"stored_shape": stored, "scale": scale, "norm": data.get("norm"),
                           "augment": cfg.get("augment") or "none", "channels": int(stored[0])},
            "run": {"run_id": cfg.get("run_id"), "dataset": cfg.get("dataset"), "seed": cfg.get("seed")}}


def _method_from_meta(meta: dict):
    cls = get_method(meta["method"])
    params = cls.Params(**meta["method_params"])
    enc = meta["encoder"]
    # The trained weights come from the file: no pretrained download when rebuilding.
    choice = EncoderChoice(enc["name"], enc["embedder"], False, "", enc["freeze_bn"])
    return cls(params, input_shape=tuple(meta["input_shape"]), embedding_dim=meta["embedding_dim"], encoder=choice,
               num_classes=meta["num_classes"])


def load_run(run_dir: Path):
    """A complete run's trained method (eval mode, on the CPU) and its export metadata."""
    run_dir = Path(run_dir)
    if not layout.is_complete(run_dir):
        raise DMLBenchError(f"{run_dir} is not a complete run (no metrics.json); give a run folder bench run finished")
    cfg = read_json(run_dir / layout.CONFIG)
    if not get_method(cfg["method"]).trainable:
        raise DMLBenchError(f"{run_dir} is a run of {cfg['method']}, which trains nothing: there is no embedder to "
                            "export")
    ckpt_path = run_dir / layout.CHECKPOINT
    if not ckpt_path.is_file():
        raise DMLBenchError(f"{ckpt_path} is missing: the trained weights are in the run's checkpoint (checkpoints are "
                            "not committed); re-run the run (bench run with the same options) to make it")
    ckpt = torch_load(ckpt_path, map_location="cpu")
    meta = _meta(cfg, dict(cfg.get("data") or {}))
    method = _method_from_meta(meta)
    try:
        method.load_state_dict(ckpt["model"])
    except (KeyError, RuntimeError) as e:
        raise CorruptFileError(ckpt_path, f"its weights do not fit {cfg['method']} ({type(e).__name__})") from None
    return method.eval(), meta


def export(run_dir: Path, fmt: str, out: Path) -> Path:
    """Write the embedder of the run in ``run_dir`` to ``out`` as ``fmt``; returns the path."""
    if fmt not in FORMATS:
        raise DMLBenchError(f"--format {fmt!r} is not one of: {', '.join(FORMATS)}")
    method, meta = load_run(run_dir)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    module = Embedder(method).eval()
    example = torch.zeros((2, *meta["input_shape"]))
    text = json.dumps(meta)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in method.state_dict().items()}, str(out), metadata={META_KEY: text})
    elif fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is what the format asks for
            traced = torch.jit.trace(module, example, check_trace=False)
            torch.jit.save(traced, str(out), _extra_files={f"{META_KEY}.json": text})
    else:
        _export_onnx(module, example, out, text)
    return out


def _export_onnx(module: nn.Module, example: torch.Tensor, out: Path, text: str) -> None:
    try:
        import onnx
    except ImportError:
        raise DMLBenchError("--format onnx needs onnx: pip install 'dmlbench[export]'") from None
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript-based exporter: it needs onnx alone (the torch.export one needs onnxscript).
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, (example,), str(out), input_names=["images"], output_names=["embeddings"],
                          dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}}, dynamo=False)
    model = onnx.load(str(out))
    entry = model.metadata_props.add()
    entry.key, entry.value = META_KEY, text
    onnx.save(model, str(out))


class Preprocess:
    """Images as the run's evaluation saw them: brought to the stored size (shorter side, then centre
    crop), scaled, centre-cropped to the encoder's input, normalised."""

    def __init__(self, meta: dict):
        p = meta["preprocess"]
        self.stored = tuple(p["stored_shape"])
        self.scale = float(p["scale"])
        self.norm = p.get("norm")
        self.augment = p.get("augment") or "none"
        self.input_hw = tuple(meta["input_shape"][1:])

    def _array(self, image) -> np.ndarray:
        if hasattr(image, "convert"):  # a PIL image: to the run's channels and stored size
            from PIL import Image

            im = image.convert("L" if self.stored[0] == 1 else "RGB")
            h, w = self.stored[1:]
            if im.size != (w, h):
                side = min(im.size)
                left, top = (im.size[0] - side) // 2, (im.size[1] - side) // 2
                im = im.resize((w, h), Image.BILINEAR, box=(left, top, left + side, top + side))
            a = np.asarray(im)
        else:
            a = np.asarray(image)
        if a.dtype != np.uint8:
            raise DMLBenchError(f"preprocess takes uint8 images (as stored, 0-255), got {a.dtype}")
        if a.ndim == 2:
            a = a[None]
        elif a.ndim == 3 and a.shape[0] not in (1, 3) and a.shape[-1] in (1, 3):
            a = np.transpose(a, (2, 0, 1))  # (H, W, C) -> (C, H, W)
        return a

    def __call__(self, images) -> torch.Tensor:
        """One image or a batch -> the float batch (N, C, H, W) the embedder takes."""
        if isinstance(images, np.ndarray) and images.ndim == 4:
            batch = images
        else:
            batch = np.stack([self._array(images)] if not isinstance(images, (list, tuple))
                             else [self._array(i) for i in images])
        x = torch.from_numpy(np.ascontiguousarray(batch)).float().mul_(self.scale)
        if tuple(x.shape[-2:]) != self.input_hw:
            x = eval_transform(x, self.augment, self.input_hw)
        if self.norm is not None:
            mean, std = self.norm
            x = (x - torch.as_tensor(mean, dtype=torch.float32)) / torch.as_tensor(std, dtype=torch.float32)
        return x


class OnnxEmbedder:
    """An ONNX embedder run by onnxruntime, called like a module: float images -> embeddings."""

    def __init__(self, path: Path):
        try:
            import onnxruntime
        except ImportError:
            raise DMLBenchError("an ONNX embedder needs onnxruntime: pip install 'dmlbench[export]'") from None
        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def __call__(self, x) -> torch.Tensor:
        """Embeddings of a preprocessed batch."""
        x = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float32)
        return torch.from_numpy(self.session.run(["embeddings"], {"images": x.astype(np.float32)})[0])


def load_embedder(path: Path):
    """``(module, preprocess)`` of an exported embedder (the format from the file's suffix)."""
    path = Path(path)
    if not path.is_file():
        raise DMLBenchError(f"{path} does not exist; write one with bench export RUN_DIR --out {path.name}")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            from safetensors.torch import load_file

            with safe_open(str(path), "pt") as f:
                meta = json.loads(f.metadata()[META_KEY])
            method = _method_from_meta(meta)
            method.load_state_dict(load_file(str(path)))
            return Embedder(method.eval()).eval(), Preprocess(meta)
        if path.suffix == ".onnx":
            import onnx

            props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
            return OnnxEmbedder(path), Preprocess(json.loads(props[META_KEY]))
        extra = {f"{META_KEY}.json": ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        return module.eval(), Preprocess(json.loads(extra[f"{META_KEY}.json"]))
    except DMLBenchError:
        raise
    except Exception as e:  # noqa: BLE001 - a file that is no exported embedder fails in many ways
        raise CorruptFileError(path, f"not a dmlbench embedder ({type(e).__name__}: {str(e)[:160]})") from None
