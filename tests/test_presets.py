"""The shipped presets: their protocol values, a few real steps of Hoffer & Ailon's CIFAR-10
protocol on a tiny CIFAR-format file, and (slow) the TVAE effect on real MNIST."""

from __future__ import annotations

import json
import tomllib
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dmlbench.cli import app


def bench(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def preset(name: str) -> dict:
    return tomllib.loads(resources.files("dmlbench.presets").joinpath(f"{name}.toml").read_text())


def test_presets_are_listed_and_state_their_protocols():
    listed = bench("list", "presets").stdout
    for name in ("tvae-paper", "mnist-all", "hoffer-cifar10", "mnist-disjoint", "digits-all", "mlrc-cub", "zappos50k"):
        assert name in listed

    c = preset("mlrc-cub")
    # MLRC: RMSprop 1e-6 (trunk and embedder), wd 5e-5, momentum 0.9, batch 32 with m = 4, 128-d, frozen BN.
    assert (c["optimizer"], c["lr"], c["trunk_lr"], c["weight_decay"], c["momentum"]) == ("rmsprop", 1e-6, 1e-6, 5e-5, 0.9)
    assert (c["batch_size"], c["embedding_dim"], c["freeze_bn"], c["augment"]) == (32, 128, True, "mlrc")
    assert "triplet-hinge.m=4" in c["set"] and c["dataset"] == "cub200"
    d = preset("mnist-disjoint")
    assert d["split"] == "classes" and "raw" in d["methods"] and len(d["seeds"]) == 3
    # The cross-dataset comparison: the same methods, seeds and budget on digits, MNIST, unseen digits.
    a, g = preset("mnist-all"), preset("digits-all")
    assert a["methods"] == d["methods"] == g["methods"] and a["seeds"] == d["seeds"] == g["seeds"]
    assert d["steps"] == g["steps"] == a["epochs"] * (60_000 // a["batch_size"]) == 1872
    keys = ("encoder", "embedding_dim", "lr", "lr_schedule", "batch_size")
    assert [a[k] for k in keys] == [d[k] for k in keys] == [g[k] for k in keys]

    h = preset("hoffer-cifar10")
    # 640k triplets per epoch = 1,920,000 images; 128 triplets a step = 384 images.
    assert (h["encoder"], h["embedding_dim"], h["optimizer"], h["lr"], h["momentum"]) == ("cifar", 128, "sgd", 0.1, 0.9)
    assert h["epoch_size"] == 3 * 640_000 and h["batch_size"] == 3 * 128 and h["test_triplets"] == 64_000
    assert h["methods"] == ["triplet-softmax"]

    t = preset("tvae-paper")
    assert (t["encoder"], t["embedding_dim"], t["dataset"]) == ("mlp", 20, "mnist")
    assert set(t["methods"]) == {"vae", "tvae"} and len(t["seeds"]) == 3
    assert "tvae.recon=l2" in t["set"] and "vae.recon=l2" in t["set"]

    a = preset("mnist-all")
    assert set(a["methods"]) == {"siamese", "triplet-softmax", "triplet-hinge", "npair", "vae", "tvae", "raw"}
    assert len(a["seeds"]) == 3 and "encoder" in a and "epochs" in a and "batch_size" in a


def write_tiny_cifar_bin(root: Path, per_batch: int = 30, seed: int = 0) -> Path:
    """The official binary layout: records of 1 label byte + 3072 pixel bytes."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = np.arange(per_batch) % 10
        pixels = rng.integers(0, 256, size=(per_batch, 3072))
        # A class-dependent brightness, so there is something to learn.
        pixels = np.clip(pixels // 2 + labels[:, None] * 12, 0, 255)
        records = np.concatenate([labels[:, None], pixels], axis=1).astype(np.uint8)
        (folder / f"{name}.bin").write_bytes(records.tobytes())
    return folder


def test_hoffer_cifar10_preset_runs_a_few_steps(tmp_path):
    write_tiny_cifar_bin(tmp_path / "data")
    out = tmp_path / "results"
    # The preset as shipped, shortened only in length: 4 steps of 128 triplets, 300 test triplets.
    r = bench("run", "--preset", "hoffer-cifar10", "--data-dir", tmp_path / "data", "--epochs", "1",
              "--epoch-size", 4 * 384, "--test-triplets", 300, "--out", out)
    assert r.exit_code == 0, (r.stdout, r.stderr)
    run = next((out / "cifar10" / "hoffer-cifar10" / "triplet-softmax").iterdir())
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["optimizer"], cfg["lr"], cfg["momentum"], cfg["encoder"], cfg["embedding_dim"]) == ("sgd", 0.1, 0.9, "cifar", 128)
    assert cfg["normalize"] == "standard" and cfg["data"]["input_shape"] == [3, 32, 32]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["embedding_dim"] == 128 and 0.0 <= metrics["svm_acc"] <= 1.0
    history = (run / "history.csv").read_text().splitlines()
    assert len(history) == 2 and history[0].startswith("epoch,step,ratio,loss")
    assert cfg["steps"] == 4
    z = np.load(run / "embeddings.npz")
    assert z["test_emb"].shape == (30, 128) and z["test_triplets"].shape == (300, 3)
    assert (run / "confusion.csv").is_file()


@pytest.mark.slow
def test_presets_without_their_data_say_where_the_files_go(tmp_path):
    for name, needle in (("zappos50k", "ut-zap50k-images"), ("mnist-disjoint", "mnist")):
        r = bench("run", "--preset", name, "--data-dir", tmp_path, "--out", tmp_path / "r")
        assert r.exit_code == 2, (name, r.stderr)
        assert r.stderr.startswith("error: ") and needle in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_tvae_beats_vae_on_real_mnist(data_dir, tmp_path):
    """A short version of the tvae-paper preset on real MNIST: the triplet term must show."""
    out = tmp_path / "results"
    r = bench("run", "--preset", "tvae-paper", "--data-dir", data_dir, "--seeds", "0", "--epochs", "3",
              "--set", "tvae.weights.triplet=10", "--out", out)
    assert r.exit_code == 0, (r.stdout, r.stderr)
    acc = {}
    for method in ("vae", "tvae", "raw"):
        run = next((out / "mnist" / "tvae-paper" / method).iterdir())
        acc[method] = json.loads((run / "metrics.json").read_text())["triplet_acc"]
    assert acc["tvae"] > acc["vae"] + 0.08, acc
    assert acc["tvae"] > 0.9, acc


def test_a_budget_flag_replaces_the_presets_budget():
    from dmlbench.core.errors import DMLBenchError
    from dmlbench.running.presets import read_toml
    from dmlbench.running.suite import resolve_suite

    file_values = read_toml(None, "mnist-all")
    assert file_values["epochs"] == 4
    steps = resolve_suite(file_values, {"steps": 500}).base
    assert (steps.steps, steps.epochs) == (500, None)
    epochs = resolve_suite(file_values, {"epochs": 1}).base
    assert (epochs.steps, epochs.epochs) == (None, 1)
    assert resolve_suite(file_values, {}).base.epochs == 4
    with pytest.raises(DMLBenchError, match="steps or epochs, not both"):
        resolve_suite(file_values, {"steps": 5, "epochs": 1}).base.check()
