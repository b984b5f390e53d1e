"""Method contract, short training runs, the plugin path, the PML wrapper and the method registry."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from torch import nn

from dmlbench.blocks.batches import Batch, BatchKind
from dmlbench.blocks.sampling import ClassIndex
from dmlbench.core.errors import DMLBenchError
from dmlbench.core.params import apply_overrides
from dmlbench.evaluation.evaluate import embed_part
from dmlbench.evaluation.neighbors import retrieval_metrics
from dmlbench.methods import (
    BUILTIN,
    METHODS,
    GenerativeMethod,
    Method,
    Params,
    get_method,
    method_names,
    register_method,
)
from dmlbench.methods.pml import installed_pml_loss_names, pml_loss_names, pml_method
from dmlbench.running.config import RunConfig
from dmlbench.running.execute import run_suite
from dmlbench.running.runner import build_method
from dmlbench.running.suite import Suite
from dmlbench.training.inputs import DeviceImages, InputPipeline
from dmlbench.training.trainer import Trainer

CONTRACT = [n for n in method_names() if n != "raw"] + ["pml:MultiSimilarityLoss", "pml:ArcFaceLoss"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: a second intra-op thread only adds synchronisation, which on a busy
    machine (other processes on the cores) makes a step 10-20x slower."""
    from dmlbench.core.runtime import set_threads

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    set_threads(n)  # the suite below sets torch's, faiss's and BLAS's threads: give every one back


def first_layer(module: nn.Module) -> nn.Module:
    return next(m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


def real_batch(method: Method, data, batch_size: int = 60, seed: int = 0) -> Batch:
    """One training batch of ``data`` drawn, gathered and converted as the trainer does it."""
    kind = method.batch_kind
    index = ClassIndex(torch.from_numpy(data.train.y)) if kind.needs_index else None
    layout = kind.layout(batch_size, data.num_train_classes)
    idx = kind.epoch_indices(index, len(data.train), layout, 1, torch.Generator().manual_seed(seed))[0]
    images = DeviceImages(data.train, "cpu")
    x = InputPipeline(data).train(images.take(idx), torch.Generator().manual_seed(seed))
    return kind.batch(x, images.y[idx], layout)


def eval_images(data, n: int) -> torch.Tensor:
    """The first n test images as evaluation feeds them to ``embed``: float, scaled to [0, 1]."""
    return InputPipeline(data).eval(torch.from_numpy(data.test.x[:n]))


def map_r(method: Method, data) -> dict[str, float]:
    emb = embed_part(method, data.test, InputPipeline(data), "cpu")
    return retrieval_metrics(emb, data.test.y)[0]


# ---------------------------------------------------------------- (a) the contract every method keeps

@pytest.mark.parametrize("name", CONTRACT)
def test_method_contract(name, digits):
    cls = get_method(name)
    torch.manual_seed(0)
    m = cls(cls.Params(), input_shape=digits.input_shape, embedding_dim=6, encoder="mlp", num_classes=10)
    assert m.trainable
    assert isinstance(m.batch_kind, BatchKind)
    batch = real_batch(m, digits)
    assert len(batch.x) > 0 and batch.x.dtype == torch.float32
    terms = m.loss_terms(batch)
    assert list(terms) == list(m.terms) and set(terms) == set(m.weights)
    for k, v in terms.items():
        assert v.dim() == 0, f"{name}: term {k} is not a scalar"
        assert torch.isfinite(v), f"{name}: term {k} = {v}"
    total = sum(m.weights[k] * v for k, v in terms.items())
    assert total.item() > 0
    m.net.zero_grad()
    total.backward()
    grad = first_layer(m.encoder).weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    with torch.no_grad():
        e = m.embed(eval_images(digits, 7))
    assert e.shape == (7, 6)
    assert torch.isfinite(e).all()
    # Every network (the encoder, a loss's own weights, a decoder) is in the state dict.
    assert set(m.state_dict()) == set(m.net.state_dict()) and any(k.startswith("encoder.") for k in m.state_dict())
    if isinstance(m, GenerativeMethod):
        x = eval_images(digits, 5)
        assert m.reconstruct(x).shape == x.shape
        gm = m.generative_metrics(x)
        assert set(gm) == {"recon_error", "elbo"}
        assert all(v.shape == (5,) and torch.isfinite(v).all() for v in gm.values())


def test_the_contract_is_declared_with_docstrings():
    for fn in (Method.loss_terms, Method.embed, GenerativeMethod.reconstruct, GenerativeMethod.generative_metrics):
        assert "Args" in fn.__doc__ and "Returns" in fn.__doc__, fn.__name__
    assert Method.batch_kind.__doc__
    with pytest.raises(NotImplementedError):
        Method.loss_terms(None, None)


def test_a_loss_term_without_a_weight_is_an_error_when_built():
    cls = get_method("tvae")
    kw = dict(input_shape=(1, 8, 8), embedding_dim=4, encoder="mlp", num_classes=10)
    with pytest.raises(DMLBenchError, match="must match one to one"):
        cls(cls.Params(weights={"recon": 1.0, "kl": 1.0}), **kw)
    with pytest.raises(DMLBenchError, match="must match one to one"):
        cls(cls.Params(weights={"recon": 1.0, "kl": 1.0, "triplet": 1.0, "extra": 1.0}), **kw)

    @dataclass
    class P(Params):
        weights: dict[str, float] = field(default_factory=lambda: {"a": 1.0})

    class Mismatch(Method):
        Params = P
        terms = ("a", "b")

    with pytest.raises(DMLBenchError, match="declare terms"):
        register_method("test-mismatch")(Mismatch)
    assert "test-mismatch" not in METHODS


@pytest.mark.parametrize("encoder", ["mlp", "convnet"])
def test_embeddings_do_not_depend_on_the_embedding_block(encoder, digits):
    # The CPU's block (512 images) was chosen for speed only: what it computes must not depend on it.
    cls = get_method("triplet-hinge")
    torch.manual_seed(0)
    m = cls(cls.Params(), input_shape=digits.input_shape, embedding_dim=6, encoder=encoder, num_classes=10)
    pipe = InputPipeline(digits)
    ref = embed_part(m, digits.test, pipe, "cpu", block=len(digits.test))
    for block in (None, 7, 100):
        np.testing.assert_allclose(embed_part(m, digits.test, pipe, "cpu", block=block), ref, rtol=1e-6, atol=1e-6)


def test_raw_embeds_flattened_input(digits):
    cls = get_method("raw")
    m = cls(cls.Params(), input_shape=digits.input_shape, embedding_dim=20, encoder="mlp", num_classes=10)
    assert not m.trainable
    assert m.embedding_dim == 64
    x = eval_images(digits, 5)
    torch.testing.assert_close(m.embed(x), x.reshape(5, -1))
    assert list(m.parameters()) == []


def test_raw_pools_large_images_to_the_cap():
    cls = get_method("raw")
    m = cls(cls.Params(), input_shape=(3, 224, 224), embedding_dim=20, encoder="mlp", num_classes=10)
    assert m.embedding_dim == 3 * 18 * 18 <= 1024
    x = torch.rand(2, 3, 224, 224)
    assert m.embed(x).shape == (2, 3 * 18 * 18)


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
                    **cfg_kw).resolved().with_budget(len(digits.train))
    before = map_r(build_method(cfg, digits), digits)
    method = build_method(cfg, digits)
    history = Trainer(method, digits, cfg.train_config()).fit()
    assert [r["epoch"] for r in history] == list(range(1, 11))
    assert history[-1]["step"] == cfg.steps == 10 * (len(digits.train) // cfg.batch_size)
    after = map_r(method, digits)
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
        terms = ("pull", "push")

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
    base = RunConfig(dataset="digits", epochs=6, seed=0, test_triplets=500, threads=1)
    suite = Suite(base, ["test-plugin"], [0], {"test-plugin": {"margin": "2"}}, tmp_path)
    results = run_suite(suite)
    assert len(results) == 1
    r = results[0]
    assert r.status == "done", r.reason
    metrics = json.loads((r.run_dir / "metrics.json").read_text())
    assert metrics["recall@1"] == r.metrics["recall@1"]
    for k in ("recall@1", "map@r", "triplet_acc", "knn_acc", "svm_acc"):
        assert math.isfinite(metrics[k]) and 0 <= metrics[k] <= 1, k
    assert r.config.method_params["margin"] == 2.0
    assert metrics["steps"] == r.config.steps == 6 * (len(digits.train) // base.batch_size)
    history = (r.run_dir / "history.csv").read_text().splitlines()
    assert history[0].split(",")[:4] == ["epoch", "step", "pull", "push"]
    assert "loss" in history[0].split(",")
    assert len(history) == 1 + 6
    # The same network at its seeded random init, before any training.
    method = build_method(r.config, digits)
    assert method.batch_kind.name == "plain"
    init = map_r(method, digits)
    assert metrics["recall@1"] > init["recall@1"] + 0.03, (init, metrics)
    assert metrics["map@r"] > init["map@r"] + 0.2, (init, metrics)


# ---------------------------------------------------------------- (d) pml:<LossName>, every listed loss


def test_listed_pml_losses_are_the_installed_ones():
    assert pml_loss_names() == installed_pml_loss_names()


@pytest.mark.parametrize("name", pml_loss_names())
def test_every_listed_pml_loss_builds_and_trains(name):
    cls = pml_method("pml:" + name)
    torch.manual_seed(0)
    method = cls(cls.Params(), input_shape=(1, 8, 8), embedding_dim=16, encoder="mlp", num_classes=10)
    kind = method.batch_kind
    assert kind.name == "balanced" and kind.m == cls.Params().m_per_class
    y = torch.arange(200) % 10
    layout = kind.layout(40, 10)
    idx = kind.epoch_indices(ClassIndex(y), len(y), layout, 1, torch.Generator().manual_seed(0))[0]
    x = torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    terms = method.loss_terms(kind.batch(x[idx], y[idx], layout))
    assert list(terms) == ["loss"]
    loss = terms["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None for p in method.encoder.parameters())


def test_pml_losses_with_inherited_or_clashing_options():
    # CosFaceLoss takes num_classes/embedding_size through *args; CircleLoss has its own `m`.
    assert "margin" in pml_method("pml:CosFaceLoss").Params.__dataclass_fields__
    circle = pml_method("pml:CircleLoss").Params()
    assert circle.m == 0.4 and circle.m_per_class == 4
    assert "GenericPairLoss" not in pml_loss_names() and "VICRegLoss" not in pml_loss_names()


def test_pml_miner_and_bad_options():
    cls = get_method("pml:MultiSimilarityLoss")
    kw = dict(input_shape=(1, 8, 8), embedding_dim=4, encoder="mlp", num_classes=10)
    m = cls(cls.Params(miner="MultiSimilarityMiner", m_per_class=2), **kw)
    assert type(m.miner).__name__ == "MultiSimilarityMiner" and m.batch_kind.m == 2
    with pytest.raises(DMLBenchError, match="unknown PML miner 'NoMiner'"):
        cls(cls.Params(miner="NoMiner"), **kw)
    with pytest.raises(DMLBenchError, match="m_per_class=1"):
        cls.Params(m_per_class=1).validate()
    # PML's own argument errors become one-line errors naming the method (the type check of
    # apply_overrides is bypassed here to reach PML with a value it refuses).
    arc = get_method("pml:ArcFaceLoss")
    with pytest.raises(DMLBenchError, match="pml:ArcFaceLoss: cannot build the loss") as e:
        arc(arc.Params(margin="x"), **kw)
    assert "\n" not in str(e.value)


def test_pml_miner_with_arguments_a_shared_distance_and_plain_batches_compute_pmls_own_loss():
    """PML's TripletMarginLoss MNIST example, as options: the semi-hard miner with its margin, one
    CosineSimilarity for the loss and the miner, random batches. The loss is PML's, computed by hand."""
    from pytorch_metric_learning import distances, losses, miners

    from dmlbench.blocks.batches import PLAIN

    cls = get_method("pml:TripletMarginLoss")
    params = apply_overrides(cls.Params(), {"margin": "0.2", "distance": "CosineSimilarity", "batches": "plain",
                                            "miner": "TripletMarginMiner(margin=0.2, type_of_triplets=semihard)"},
                             cls.name)
    torch.manual_seed(0)
    m = cls(params, input_shape=(1, 8, 8), embedding_dim=8, encoder="mlp", num_classes=10)
    assert m.batch_kind == PLAIN and m.miner.type_of_triplets == "semihard" and m.miner.margin == 0.2
    assert m.miner.distance is m.loss_fn.distance and type(m.loss_fn.distance).__name__ == "CosineSimilarity"
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.arange(64) % 10
    got = m.loss_terms(Batch(x, y))["loss"]
    distance = distances.CosineSimilarity()
    emb = m.encoder(x)
    mined = miners.TripletMarginMiner(margin=0.2, distance=distance, type_of_triplets="semihard")(emb, y)
    assert len(mined[0]) > 0
    want = losses.TripletMarginLoss(margin=0.2, distance=distance)(emb, y, mined)
    assert torch.equal(got, want)
    with pytest.raises(DMLBenchError, match=r"miner='TripletMarginMiner\(0.2\)' must be a PML class name"):
        apply_overrides(cls.Params(), {"miner": "TripletMarginMiner(0.2)"}, cls.name)
    with pytest.raises(DMLBenchError, match="unknown PML distance 'Cosine'; known: CosineSimilarity"):
        cls(apply_overrides(cls.Params(), {"distance": "Cosine"}, cls.name), input_shape=(1, 8, 8), embedding_dim=8,
            encoder="mlp", num_classes=10)
    with pytest.raises(DMLBenchError, match=r"cannot build miner 'TripletMarginMiner\(type=1\)' \(TypeError"):
        cls(apply_overrides(cls.Params(), {"miner": "TripletMarginMiner(type=1)"}, cls.name), input_shape=(1, 8, 8),
            embedding_dim=8, encoder="mlp", num_classes=10)


def test_pml_loss_weights_train_and_checkpoint():
    # ArcFace's class weights are a module of the method: trained with the encoder, saved with it.
    cls = get_method("pml:ArcFaceLoss")
    m = cls(cls.Params(), input_shape=(1, 8, 8), embedding_dim=4, encoder="mlp", num_classes=10)
    assert any(p is m.loss_fn.W for p in m.parameters())
    assert "loss_fn.W" in m.state_dict()


# ---------------------------------------------------------------- (e) the registry and the options

def test_duplicate_method_name_raises():
    original = METHODS.get("siamese")

    @dataclass
    class P(Params):
        weights: dict[str, float] = field(default_factory=lambda: {"x": 1.0})

    class Other(Method):
        Params = P
        terms = ("x",)

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


def test_methods_describe_themselves_without_building():
    for name in BUILTIN:
        d = get_method(name).describe()
        assert d["name"] == name and d["paper"] and d["formula"]
        assert set(d["defaults"]["weights"]) == set(get_method(name).terms)
        assert "lr" in d["space"]
    assert get_method("raw").describe()["space"] == {}


@pytest.mark.parametrize("owner, key, value, hint", [
    ("tvae", "marign", "0.5", "margin"),
    ("tvae", "margin", "abc", "float"),
    ("tvae", "weights.tripplet", "10", "triplet"),
    ("tvae", "weights.triplet", "much", "float"),
    ("vae", "recon", "l1", "bce"),
    ("siamese", "squared", "maybe", "bool"),
    ("tvae", "weights.triplet", "-1", ">= 0"),
    ("triplet-hinge", "m", "1", "at least 2"),
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


def test_images_reach_the_method_as_unit_floats(digits):
    # The data is uint8 (digits: 0..16, scale 1/16); a method sees floats in [0, 1].
    assert digits.train.x.dtype == np.uint8
    batch = real_batch(get_method("siamese")(get_method("siamese").Params(), input_shape=(1, 8, 8),
                                             embedding_dim=4, encoder="mlp", num_classes=10), digits)
    assert batch.x.dtype == torch.float32 and 0 <= float(batch.x.min()) and float(batch.x.max()) <= 1
    assert float(batch.x.max()) == 1.0


def test_methods_are_listed_in_the_papers_order_with_the_raw_floor_last():
    """The registry's order is the order of `bench list methods` and of every table's rows."""
    assert method_names()[:7] == [*BUILTIN, "raw"]
