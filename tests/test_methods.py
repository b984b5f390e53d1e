"""Method contract, short training runs, the plugin path and the method registry."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

from dmlbench.config import RunConfig
from dmlbench.errors import DMLBenchError
from dmlbench.evaluate import embed, retrieval_metrics
from dmlbench.methods import BUILTIN, METHODS, Batch, Method, Params, get_method, method_names, register_method
from dmlbench.methods.pml import pml_loss_names
from dmlbench.params import apply_overrides
from dmlbench.runner import build_method, run_suite
from dmlbench.sampling import epoch_indices
from dmlbench.trainer import Trainer, batch_layout

CONTRACT = [n for n in method_names() if n != "raw"] + ["pml:MultiSimilarityLoss", "pml:ArcFaceLoss"]


def first_layer(module: nn.Module) -> nn.Module:
    return next(m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


def real_batch(method: Method, data, batch_size: int = 60, seed: int = 0) -> Batch:
    spec = method.batch_spec()
    n_classes = int(data.y_train.unique().numel())
    per_step, group = batch_layout(method, RunConfig(batch_size=batch_size), n_classes)
    idx = epoch_indices(spec.kind, data.y_train, per_step, 1, torch.Generator().manual_seed(seed), m=spec.m,
                        group=group)[0]
    return Batch(data.x_train[idx], data.y_train[idx], spec, group)


# ---------------------------------------------------------------- (a) the contract every method keeps

@pytest.mark.parametrize("name", CONTRACT)
def test_method_contract(name, digits):
    cls = get_method(name)
    torch.manual_seed(0)
    m = cls(cls.Params(), input_shape=digits.input_shape, embedding_dim=6, encoder="mlp", num_classes=10)
    assert m.trainable
    batch = real_batch(m, digits)
    assert len(batch.x) > 0
    terms = m.loss_terms(batch)
    assert terms and set(terms) <= set(m.weights)
    for k, v in terms.items():
        assert v.dim() == 0, f"{name}: term {k} is not a scalar"
        assert torch.isfinite(v), f"{name}: term {k} = {v}"
    total = sum(m.weights[k] * v for k, v in terms.items())
    assert total.item() > 0
    m.zero_grad()
    total.backward()
    grad = first_layer(m.encoder).weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    with torch.no_grad():
        e = m.embed(digits.x_test[:7])
    assert e.shape == (7, 6)
    assert torch.isfinite(e).all()


def test_raw_embeds_flattened_input(digits):
    cls = get_method("raw")
    m = cls(cls.Params(), input_shape=digits.input_shape, embedding_dim=20, encoder="mlp", num_classes=10)
    assert not m.trainable
    assert m.embedding_dim == 64
    x = digits.x_test[:5]
    torch.testing.assert_close(m.embed(x), x.reshape(5, -1))
    assert list(m.parameters()) == []


# ---------------------------------------------------------------- (b) short runs beat the untrained net

# Each method, briefly trained on digits, against the same network at its (seeded) random init.
# map@r has headroom on digits (random init ~0.35; 10 epochs of metric learning reach ~0.6-0.9). The
# VAE is not trained for retrieval (it gains ~0.1-0.2), so it gets a smaller margin, the Bernoulli
# likelihood and smaller batches.
TRAIN = {
    "siamese": ({}, {}, 0.2),
    "triplet-softmax": ({}, {}, 0.2),
    "triplet-hinge": ({}, {}, 0.2),
    "npair": ({}, {}, 0.2),
    "vae": ({"recon": "bce"}, {"batch_size": 64, "lr": 3e-3}, 0.08),
    "tvae": ({}, {}, 0.2),
    "pml:MultiSimilarityLoss": ({}, {}, 0.2),
    "pml:ArcFaceLoss": ({}, {}, 0.2),
}


def test_every_builtin_method_is_trained_here():
    assert set(BUILTIN) <= set(TRAIN)


@pytest.mark.parametrize("name", list(TRAIN))
def test_short_training_beats_random_init(name, digits):
    method_params, cfg_kw, margin = TRAIN[name]
    cls = get_method(name)
    params = dataclasses.asdict(apply_overrides(cls.Params(), method_params, name))
    cfg = RunConfig(dataset="digits", method=name, seed=0, epochs=10, encoder="mlp", method_params=params,
                    **cfg_kw).resolved()
    y = digits.y_test.numpy()
    before = retrieval_metrics(embed(build_method(cfg, digits), digits.x_test), y)
    method = build_method(cfg, digits)
    history = Trainer(method, digits, cfg).fit()
    assert [r["epoch"] for r in history] == list(range(1, 11))
    after = retrieval_metrics(embed(method, digits.x_test), y)
    assert after["map@r"] >= before["map@r"] + margin, (name, before, after)
    if name != "vae":
        assert after["recall@1"] > before["recall@1"] + 0.01, (name, before, after)


# ---------------------------------------------------------------- (c) a plugin method, end to end

@pytest.fixture
def plugin_method():
    @dataclass
    class CenterContrastParams(Params):
        margin: float = 1.0
        weights: dict[str, float] = field(default_factory=lambda: {"pull": 1.0, "push": 1.0})

    @register_method("test-plugin")
    class CenterContrast(Method):
        """Pull each embedding to its class centre in the batch; push centres at least ``margin`` apart."""

        paper = "test plugin"
        formula = "mean ||f - c_y||^2 + mean_{a != b} max(0, m - ||c_a - c_b||)^2"
        Params = CenterContrastParams

        def loss_terms(self, batch: Batch) -> dict[str, torch.Tensor]:
            emb = self.encoder(batch.x)
            classes, inv = batch.y.unique(return_inverse=True)
            centres = torch.zeros(len(classes), emb.shape[1]).index_add(0, inv, emb)
            centres = centres / torch.bincount(inv, minlength=len(classes)).unsqueeze(1)
            pull = (emb - centres[inv]).pow(2).sum(1).mean()
            d = torch.cdist(centres, centres)
            off = ~torch.eye(len(classes), dtype=torch.bool)
            push = torch.relu(self.params.margin - d[off]).pow(2).mean()
            return {"pull": pull, "push": push}

    try:
        yield CenterContrast
    finally:
        METHODS.remove("test-plugin")
    assert "test-plugin" not in METHODS


def test_plugin_method_runs_through_the_suite(plugin_method, digits, tmp_path):
    assert get_method("test-plugin") is plugin_method
    base = RunConfig(dataset="digits", epochs=6, seed=0, test_triplets=500)
    results = run_suite(base, ["test-plugin"], [0], {"test-plugin": {"margin": "2"}}, tmp_path)
    assert len(results) == 1
    r = results[0]
    assert r.status == "done", r.reason
    metrics = json.loads((r.run_dir / "metrics.json").read_text())
    assert metrics["recall@1"] == r.metrics["recall@1"]
    for k in ("recall@1", "map@r", "triplet_acc", "knn_acc", "svm_acc"):
        assert math.isfinite(metrics[k]) and 0 <= metrics[k] <= 1, k
    assert r.config.method_params["margin"] == 2.0
    history = (r.run_dir / "history.csv").read_text().splitlines()
    assert history[0].split(",")[:4] == ["epoch", "pull", "push", "loss"]
    assert len(history) == 1 + 6
    # The same network at its seeded random init, before any training.
    init = retrieval_metrics(embed(build_method(r.config, digits), digits.x_test), digits.y_test.numpy())
    assert metrics["recall@1"] > init["recall@1"] + 0.03, (init, metrics)
    assert metrics["map@r"] > init["map@r"] + 0.2, (init, metrics)


# ---------------------------------------------------------------- (d) the registry and the options

def test_duplicate_method_name_raises():
    original = METHODS.get("siamese")

    class Other(Method):
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_method("siamese")(Other)
    assert METHODS.get("siamese") is original


def test_unknown_method_lists_known_names():
    with pytest.raises(DMLBenchError) as e:
        get_method("siamse")
    msg = str(e.value)
    assert "siamse" in msg
    for name in ("siamese", "triplet-softmax", "triplet-hinge", "npair", "vae", "tvae", "raw"):
        assert name in msg


def test_unknown_pml_loss_lists_pml_losses():
    with pytest.raises(DMLBenchError) as e:
        get_method("pml:NoSuchLoss")
    msg = str(e.value)
    assert "NoSuchLoss" in msg
    for name in ("ArcFaceLoss", "MultiSimilarityLoss", "ContrastiveLoss", "TripletMarginLoss"):
        assert name in msg
        assert name in pml_loss_names()


def test_pml_arcface_params_have_margin():
    cls = get_method("pml:ArcFaceLoss")
    fields = {f.name: f for f in dataclasses.fields(cls.Params)}
    assert "margin" in fields and "scale" in fields
    assert cls.Params().margin == pytest.approx(28.6)
    assert "num_classes" not in fields and "embedding_size" not in fields  # filled in by the method
    p = apply_overrides(cls.Params(), {"margin": "10"}, "pml:ArcFaceLoss")
    assert p.margin == 10.0
    assert get_method("pml:ArcFaceLoss") is cls  # cached


@pytest.mark.parametrize("owner, key, value, hint", [
    ("tvae", "marign", "0.5", "margin"),
    ("tvae", "margin", "abc", "float"),
    ("tvae", "weights.tripplet", "10", "triplet"),
    ("tvae", "weights.triplet", "much", "float"),
    ("vae", "recon", "l1", "bce"),
    ("siamese", "squared", "maybe", "bool"),
    ("tvae", "weights.triplet", "-1", ">= 0"),
])
def test_apply_overrides_rejects_bad_options(owner, key, value, hint):
    with pytest.raises(DMLBenchError) as e:
        apply_overrides(get_method(owner).Params(), {key: value}, owner)
    assert hint in str(e.value)


def test_apply_overrides_accepts_typed_values():
    base = get_method("tvae").Params()
    p = apply_overrides(base, {"weights.triplet": "10", "margin": "0.5", "recon": "bce"}, "tvae")
    assert p.weights == {"recon": 1.0, "kl": 1.0, "triplet": 10.0}
    assert isinstance(p.weights["triplet"], float)
    assert p.margin == 0.5 and p.recon == "bce"
    assert base.weights["triplet"] == 1.0 and base.margin == 1.0  # the original is untouched
    s = apply_overrides(get_method("siamese").Params(), {"squared": "false"}, "siamese")
    assert s.squared is False
