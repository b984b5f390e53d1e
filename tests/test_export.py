"""bench export: a trained digits run's embedder in each format, loaded back with
dmlbench.load_embedder, reproduces the run's saved test embeddings (ONNX through onnxruntime)."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

import dmlbench
from dmlbench.cli import app
from dmlbench.data import load_dataset


def bench(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    r = bench("run", "--methods", "triplet-hinge,tvae", "--steps", "20", "--test-triplets", "100", "--threads", "2",
              "--out", out)
    assert r.exit_code == 0, r.stderr
    return {m: next((out / "digits" / m).glob("s0-*")) for m in ("triplet-hinge", "tvae", "raw")}


@pytest.mark.parametrize("fmt", ["safetensors", "torchscript", "onnx"])
@pytest.mark.parametrize("method", ["triplet-hinge", "tvae"])
def test_an_exported_embedder_reproduces_the_runs_test_embeddings(runs, tmp_path, fmt, method):
    if fmt == "safetensors":
        pytest.importorskip("safetensors")
    if fmt == "onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    suffix = {"safetensors": ".safetensors", "torchscript": ".pt", "onnx": ".onnx"}[fmt]
    out = tmp_path / f"embedder{suffix}"
    r = bench("export", runs[method], "--format", fmt, "--out", out)
    assert r.exit_code == 0 and out.is_file(), r.stderr
    module, preprocess = dmlbench.load_embedder(out)
    saved = np.load(runs[method] / "embeddings.npz")["test_emb"]
    test = load_dataset("digits").test
    images = np.asarray(test.images(np.arange(len(test))))  # uint8 (N, 1, 8, 8), as stored
    got = module(preprocess(images)).detach().numpy()
    assert got.shape == saved.shape
    np.testing.assert_allclose(got, saved, atol=1e-5)  # for TVAE: the posterior mean, as evaluated
    # One image at a time, as an (H, W) uint8 array or a PIL image, gives the same embedding.
    from PIL import Image

    one = module(preprocess(images[3, 0])).detach().numpy()
    pil = module(preprocess(Image.fromarray(images[3, 0]))).detach().numpy()
    np.testing.assert_allclose(one[0], saved[3], atol=1e-5)
    np.testing.assert_allclose(pil[0], saved[3], atol=1e-5)


def test_export_refuses_what_has_no_embedder(runs, tmp_path):
    r = bench("export", runs["raw"], "--out", tmp_path / "raw.pt", "--format", "torchscript")
    assert r.exit_code == 2 and "trains nothing" in r.stderr
    r = bench("export", runs["tvae"], "--format", "h5")
    assert r.exit_code == 2 and "not one of: safetensors, torchscript, onnx" in r.stderr
    ckpt = runs["tvae"] / "checkpoint.pt"
    moved = ckpt.rename(tmp_path / "kept.pt")
    try:
        r = bench("export", runs["tvae"], "--out", tmp_path / "x.pt", "--format", "torchscript")
        assert r.exit_code == 2 and "checkpoint.pt is missing" in r.stderr
    finally:
        moved.rename(ckpt)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(dmlbench.DMLBenchError, match="not a dmlbench embedder"):
        dmlbench.load_embedder(tmp_path / "junk.onnx")
