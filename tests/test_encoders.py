"""Encoders register like methods (issue #33): ``@register_encoder`` in a ``--plugin`` file or a
package's ``dmlbench.encoders`` entry point, then ``--encoder NAME`` for every method in ``bench
run`` and ``bench tune``, sequentially, in a worker pool and under Ray; ``bench list encoders``
shows it. A broken encoder is a one-line error naming it and the fix, before any training step.
All on the bundled digits (8x8), a few steps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from dmlbench.blocks import ENCODERS, register_encoder
from dmlbench.blocks.encoders import build_encoder, example_batch
from dmlbench.cli import app
from dmlbench.core.errors import DMLBenchError
from dmlbench.core.registry import LOADED_PLUGINS
from dmlbench.methods import EncoderChoice, get_method
from dmlbench.methods.base import METHODS

TINY = ["--steps", "4", "--epoch-size", "256", "--test-triplets", "60", "--threads", "2"]


def bench(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def metrics(out: Path) -> dict:
    return {(m.parent.parent.name, m.parent.name): {k: v for k, v in json.loads(m.read_text()).items()
                                                    if not k.endswith("_seconds")}
            for m in (out / "digits").glob("*/s*-*/metrics.json")}


@pytest.fixture(autouse=True)
def registries():
    """Leave the encoder and method registries, and the plugins handed to workers, as they were."""
    encoders, methods, plugins = set(ENCODERS.names()), set(METHODS.names()), list(LOADED_PLUGINS)
    yield
    for name in set(ENCODERS.names()) - encoders:
        ENCODERS.remove(name)
    for name in set(METHODS.names()) - methods:
        METHODS.remove(name)
    LOADED_PLUGINS[:] = plugins


PLUGIN = '''
"""A plugin trunk: convolutions, BatchNorm, dropout, global pooling (any size)."""
from torch import nn

from dmlbench.blocks import register_encoder


@register_encoder("{name}", accepts=lambda s: None if min(s[1:]) >= 4 else "needs 4x4 or larger; set data.resize")
def trunk(shape, out_dim):
    """conv3x3-16, BatchNorm, dropout, global average pool, linear."""
    return nn.Sequential(nn.Conv2d(shape[0], 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Dropout(0.2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, out_dim))
'''


def plugin(tmp_path: Path, name: str, text: str = PLUGIN) -> Path:
    """A plugin file registering encoder ``name`` (one file stem per name: modules persist per process)."""
    path = tmp_path / f"enc_{name.replace('-', '_')}.py"
    path.write_text(text.format(name=name))
    return path


# ----------------------------------------------------------------------------- registering and running


def test_a_plugin_encoder_trains_every_kind_of_method_and_is_listed(tmp_path):
    path = plugin(tmp_path, "trunk-run")
    r = bench("run", "--plugin", path, "--encoder", "trunk-run", "--methods",
              "triplet-hinge,siamese,pml:MultiSimilarityLoss", *TINY, "--out", tmp_path / "r")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    got = metrics(tmp_path / "r")
    assert {m for m, _ in got} == {"triplet-hinge", "siamese", "pml-MultiSimilarityLoss", "raw"}, got
    for cfg in (tmp_path / "r" / "digits").glob("triplet-hinge/s*/config.json"):
        assert json.loads(cfg.read_text())["encoder"] == "trunk-run"
    listed = bench("list", "encoders", "--plugin", path)
    assert "trunk-run" in listed.stdout and "conv3x3-16, BatchNorm, dropout" in listed.stdout


def test_the_network_is_the_registered_one_from_a_function_or_a_class():
    @register_encoder("fn-net")
    def fn_net(shape, out_dim):
        """Flatten and one linear layer."""
        return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(shape)), out_dim))

    @register_encoder("cls-net", description="a class")
    class ClsNet(nn.Module):
        def __init__(self, shape, out_dim):
            super().__init__()
            self.fc = nn.Linear(int(np.prod(shape)), out_dim)

        def forward(self, x):
            return self.fc(x.flatten(1))

    assert fn_net((1, 2, 2), 3)[1].out_features == 3  # the decorator returns the builder unchanged
    cls = get_method("triplet-hinge")
    for name, kind in (("fn-net", nn.Sequential), ("cls-net", ClsNet)):
        m = cls(cls.Params(), input_shape=(1, 8, 8), embedding_dim=5, encoder=EncoderChoice(name), num_classes=10)
        assert type(m.encoder) is kind and m.embed(torch.rand(7, 1, 8, 8)).shape == (7, 5)
    assert ENCODERS.get("fn-net").description == "Flatten and one linear layer."
    assert ENCODERS.get("cls-net").description == "a class"


def test_names_that_would_shadow_a_trunk_or_the_floor_are_refused_and_a_name_registers_once():
    for bad in ("timm:mine", "none", "two words", ""):
        with pytest.raises(DMLBenchError, match="is not allowed"):
            register_encoder(bad)(lambda shape, out_dim: nn.Linear(1, 1))
    with pytest.raises(ValueError, match="already registered"):
        register_encoder("mlp")(lambda shape, out_dim: nn.Linear(1, 1))


def test_the_check_changes_neither_the_weights_nor_the_random_state():
    """The example batch goes through the network in eval mode and through a copy in training
    mode: BatchNorm statistics, weights and the global generator are those of an unchecked build."""
    @register_encoder("bn-drop")
    def bn_drop(shape, out_dim):
        """BatchNorm and dropout: state a careless check would change."""
        return nn.Sequential(nn.Conv2d(shape[0], 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten(),
                             nn.Linear(4 * (shape[1] - 2) * (shape[2] - 2), out_dim))

    torch.manual_seed(3)
    checked = build_encoder(EncoderChoice("bn-drop"), (1, 8, 8), 6)
    after_checked = torch.rand(4)
    torch.manual_seed(3)
    plain = ENCODERS.get("bn-drop").encoder((1, 8, 8), 6)
    after_plain = torch.rand(4)
    assert torch.equal(after_checked, after_plain)
    assert checked.training  # left in the mode it was built in
    for (k, a), (_, b) in zip(checked.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(a, b), k
    assert int(checked[1].num_batches_tracked) == 0


@pytest.mark.parametrize("executor", ["local", pytest.param("ray", marks=pytest.mark.slow)])
def test_a_plugin_encoder_runs_in_every_worker_with_the_sequential_metrics(tmp_path, executor):
    if executor == "ray":
        pytest.importorskip("ray", reason="the ray extra is not installed")
    path = plugin(tmp_path, f"trunk-{executor}")
    args = ["run", "--plugin", path, "--encoder", f"trunk-{executor}", "--methods", "triplet-hinge,npair",
            "--seeds", "0", *TINY]
    # One thread per run both ways: a convolution's sums are grouped by thread count.
    one = bench(*args, "--out", tmp_path / "one", "--threads", "1")
    assert one.exit_code == 0, one.stderr
    try:
        two = bench(*args, "--out", tmp_path / "two", "--workers", "2", "--threads", "2", "--executor", executor)
    finally:
        if executor == "ray":
            import ray

            ray.shutdown()
    assert two.exit_code == 0, two.stderr
    assert metrics(tmp_path / "two") and metrics(tmp_path / "one") == metrics(tmp_path / "two")


def test_bench_tune_tunes_on_a_plugin_encoder_in_a_worker_pool(tmp_path):
    pytest.importorskip("optuna")
    path = plugin(tmp_path, "trunk-tune")
    r = bench("tune", "--plugin", path, "--encoder", "trunk-tune", "--methods", "triplet-hinge", "--trials", "2",
              "--workers", "2", "--steps", "3", "--test-triplets", "60", "--threads", "2", "--out", tmp_path)
    assert r.exit_code == 0, (r.stdout, r.stderr)
    configs = list((tmp_path / "digits" / "tune").rglob("config.json"))
    assert len(configs) == 2 and {json.loads(c.read_text())["encoder"] for c in configs} == {"trunk-tune"}


def test_a_package_registers_encoders_through_its_entry_point_group(tmp_path, monkeypatch):
    """An installed distribution's `dmlbench.encoders` entry points: one naming a module (its
    decorators register), one naming a builder function (registered under the entry point's name)."""
    (tmp_path / "ep_trunks.py").write_text(
        "from torch import nn\nfrom dmlbench.blocks import register_encoder\n\n"
        "@register_encoder('ep-decorated')\ndef a(shape, out_dim):\n    return nn.Sequential(nn.Flatten(), "
        "nn.LazyLinear(out_dim))\n\n"
        "def plain_builder(shape, out_dim):\n    \"\"\"registered by its entry point\"\"\"\n"
        "    return nn.Sequential(nn.Flatten(), nn.LazyLinear(out_dim))\n")
    dist = tmp_path / "ep_trunks-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-trunks\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[dmlbench.encoders]\nep-module = ep_trunks\n"
                                           "ep-function = ep_trunks:plain_builder\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(ENCODERS, "_plugins_loaded", False)
    assert {"ep-decorated", "ep-function"} <= set(ENCODERS.names())
    assert ENCODERS.get("ep-function").description == "registered by its entry point"
    net = build_encoder(EncoderChoice("ep-function"), (1, 8, 8), 3)  # the check's forward builds lazy layers
    assert net[1].weight.shape == (3, 64)


# ----------------------------------------------------------------------------- one-line errors


BROKEN = {
    "wrong-shape": ("nn.Sequential(nn.Conv2d(shape[0], out_dim, 3))",
                    "returns shape (2, 4, 6, 6) for a batch of 2; it must return (batch, 4)", "nn.Flatten()"),
    "no-params": ("nn.Sequential(nn.Flatten(), nn.ReLU())", "has no parameters", "nn.ModuleList"),
    "fails": ("nn.Sequential(nn.Flatten(), nn.Linear(10, out_dim))",
              "fails on a batch of 2 inputs of shape (1, 8, 8) (RuntimeError: mat1 and mat2", "accepts="),
    "builder-raises": ("nn.Linear(shape[3], out_dim)", "cannot be built for inputs (1, 8, 8) and size 4 (IndexError",
                       "fix its builder"),
    "not-a-module": ("lambda x: x", "returned a function, not a torch nn.Module", "nn.Sequential"),
    "detached": ("Detached(nn.Linear(64, out_dim))", "no gradient", "do not detach"),
}
BROKEN_PLUGIN = '''
import torch
from torch import nn

from dmlbench.blocks import register_encoder


class Detached(nn.Module):
    def __init__(self, fc):
        super().__init__()
        self.fc = fc

    def forward(self, x):
        return self.fc(x.flatten(1)).detach()


@register_encoder("{name}")
def broken(shape, out_dim):
    return {body}
'''


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_encoder_stops_the_command_before_any_run_with_one_line_naming_it(tmp_path, name):
    body, what, fix = BROKEN[name]
    path = tmp_path / f"broken_{name.replace('-', '_')}.py"
    path.write_text(BROKEN_PLUGIN.replace("{name}", name).replace("{body}", body))
    r = bench("run", "--plugin", path, "--encoder", name, "--methods", "triplet-hinge", "--embedding-dim", "4",
              *TINY, "--out", tmp_path / "r")
    assert r.exit_code == 2  # refused (a failed run would be 1)
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and f"encoder {name!r}" in err and what in err and fix in err, err
    assert not list((tmp_path / "r").rglob("config.json"))  # refused before any run started
    with pytest.raises(DMLBenchError, match=f"encoder {name!r}"):  # and when a run builds it (the API, a worker)
        build_encoder(EncoderChoice(name), (1, 8, 8), 4)


def test_nan_output_and_a_tuple_output_are_refused():
    @register_encoder("nan-net")
    def nan_net(shape, out_dim):
        fc = nn.Linear(int(np.prod(shape)), out_dim)
        nn.init.constant_(fc.weight, float("nan"))
        return nn.Sequential(nn.Flatten(), fc)

    class Pair(nn.Module):
        def __init__(self, shape, out_dim):
            super().__init__()
            self.fc = nn.Linear(int(np.prod(shape)), out_dim)

        def forward(self, x):
            return self.fc(x.flatten(1)), x

    register_encoder("pair-net")(Pair)
    with pytest.raises(DMLBenchError, match="'nan-net' returns NaN, inf or non-float values.*initialisation"):
        build_encoder(EncoderChoice("nan-net"), (1, 8, 8), 4)
    with pytest.raises(DMLBenchError, match=r"'pair-net' returns a tuple, not a tensor; return the outputs alone"):
        build_encoder(EncoderChoice("pair-net"), (1, 8, 8), 4)


def test_an_encoder_that_fails_only_at_the_real_batch_size_fails_its_first_training_batch_by_name(tmp_path):
    class Only2(nn.Module):
        """Passes the 2-image check, then fails on a real batch (a batch size written into the network)."""

        def __init__(self, shape, out_dim):
            super().__init__()
            self.fc = nn.Linear(int(np.prod(shape)), out_dim)

        def forward(self, x):
            return self.fc(x.reshape(2, -1))

    register_encoder("only-2")(Only2)
    r = bench("run", "--encoder", "only-2", "--methods", "triplet-hinge", *TINY, "--out", tmp_path)
    assert r.exit_code == 1
    (failed,) = (tmp_path / "digits" / "triplet-hinge").glob("s0-*/failed.json")
    reason = json.loads(failed.read_text())["reason"]
    assert reason.startswith("triplet-hinge with encoder 'only-2' fails on its first training batch, (126, 1, 8, 8)")
    assert "RuntimeError" in reason and "fix the encoder's forward" in reason and "\n" not in reason


def test_shape_checks_and_missing_decoders_are_refused_before_any_image_is_decoded(tmp_path):
    path = plugin(tmp_path, "trunk-refusals")
    small = bench("run", "--plugin", path, "--encoder", "trunk-refusals", "--methods", "triplet-hinge",
                  "--image-size", "3", *TINY, "--out", tmp_path / "a")
    assert small.exit_code == 2 and "encoder 'trunk-refusals' needs 4x4 or larger; set data.resize" in small.stderr
    vae = bench("run", "--plugin", path, "--encoder", "trunk-refusals", "--methods", "tvae", *TINY, "--out", tmp_path / "b")
    assert vae.exit_code == 2, vae.stderr
    assert "encoder 'trunk-refusals' has no decoder, which vae and tvae need; register one with " \
           "@register_encoder('trunk-refusals', decoder=...)" in vae.stderr
    assert not (tmp_path / "a").exists() or not list((tmp_path / "a").rglob("config.json"))
    assert not (tmp_path / "b").exists() or not list((tmp_path / "b").rglob("config.json"))


def test_a_registered_decoder_is_checked_and_trains_a_vae():
    def decoder(shape, latent_dim):
        return nn.Sequential(nn.Linear(latent_dim, int(np.prod(shape))), nn.Sigmoid(), nn.Unflatten(1, shape))

    def flat_decoder(shape, latent_dim):
        return nn.Sequential(nn.Linear(latent_dim, int(np.prod(shape))), nn.Sigmoid())

    def encoder(shape, out_dim):
        return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(shape)), out_dim))

    register_encoder("with-decoder", decoder=decoder)(encoder)
    register_encoder("flat-decoder", decoder=flat_decoder)(encoder)
    cls = get_method("vae")
    vae = cls(cls.Params(), input_shape=(1, 8, 8), embedding_dim=3, encoder=EncoderChoice("with-decoder"),
              num_classes=10)
    x = example_batch((1, 8, 8))
    assert vae.reconstruct(x).shape == x.shape and vae.encoder[1].out_features == 6  # μ and log σ²
    with pytest.raises(DMLBenchError, match=r"the decoder of encoder 'flat-decoder' returns shape \(2, 64\) for a batch "
                                            r"of 2; it must return \(batch, 1, 8, 8\): end it with nn.Unflatten"):
        cls(cls.Params(), input_shape=(1, 8, 8), embedding_dim=3, encoder=EncoderChoice("flat-decoder"), num_classes=10)
