"""timm trunks through the shared trainer (issue #9), on CPU, with random weights, no download.

timm imports torchvision, whose PyPI wheel does not import next to the CPU build torch==2.13.0:
these tests skip there (with the reason) and CI runs them in a second venv with torch 2.14.1 and
torchvision 0.29.1 (`.ci/run`), where DMLBENCH_REQUIRE_TIMM=1 turns a skip into a failure.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from typer.testing import CliRunner

from dmlbench.cli import app
from dmlbench.core.errors import DMLBenchError

pytestmark = pytest.mark.timm


def _timm_or_skip():
    from dmlbench.blocks.trunks import import_check

    why = import_check()
    if why:
        if os.environ.get("DMLBENCH_REQUIRE_TIMM") == "1":
            pytest.fail(f"timm required (DMLBENCH_REQUIRE_TIMM=1): {why}")
        pytest.skip(why)


@pytest.fixture(autouse=True)
def _timm():
    _timm_or_skip()


def bench(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


RUN = ["--dataset", "digits", "--encoder", "timm:resnet18", "--image-size", "32", "--embedding-dim", "16",
       "--steps", "3", "--batch-size", "24", "--test-triplets", "60", "--threads", "1"]


def test_resnet18_trains_a_few_steps_through_the_trainer(tmp_path):
    r = bench("run", "--methods", "triplet-hinge,npair", *RUN, "--out", tmp_path, "--augment", "mlrc",
              "--trunk-lr", "1e-4")
    assert r.exit_code == 0, (r.stderr, r.exception)
    for m in ("triplet-hinge", "npair"):
        (run,) = (tmp_path / "digits" / m).glob("s0-*")
        cfg = json.loads((run / "config.json").read_text())
        assert cfg["encoder"] == "timm:resnet18" and cfg["weights_info"] == {"model": "resnet18", "pretrained": False}
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["embedding_dim"] == 16 and metrics["steps"] == 3


def test_freeze_bn_keeps_running_stats_and_affine(tmp_path):
    from dmlbench.methods import EncoderChoice, get_method

    cls = get_method("triplet-hinge")
    m = cls(cls.Params(), input_shape=(3, 32, 32), embedding_dim=8,
            encoder=EncoderChoice("timm:resnet18", freeze_bn=True), num_classes=4)
    bn = next(mod for mod in m.encoder.trunk.modules() if isinstance(mod, torch.nn.BatchNorm2d))
    before = (bn.running_mean.clone(), bn.weight.clone())
    m.train()
    assert not bn.training and not bn.weight.requires_grad
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    emb = m.embed(torch.rand(12, 3, 32, 32))
    emb.pow(2).sum().backward()
    opt.step()
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.weight, before[1])


def test_weights_file_is_loaded_and_checksummed(tmp_path):
    import timm

    ref = timm.create_model("resnet18", num_classes=0)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    r = bench("run", "--methods", "triplet-hinge", *RUN, "--weights", path, "--out", tmp_path / "r")
    assert r.exit_code == 0, (r.stderr, r.exception)
    (run,) = (tmp_path / "r" / "digits" / "triplet-hinge").glob("s0-*")
    info = json.loads((run / "config.json").read_text())["weights_info"]
    from dmlbench.blocks.trunks import sha256

    assert info["pretrained"] and info["source"] == f"file:{path}" and info["sha256"] == sha256(path)


def test_offline_without_weights_is_one_line_saying_where_they_go(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    r = bench("run", "--methods", "triplet-hinge", *RUN, "--pretrained", "--out", tmp_path / "r")
    assert r.exit_code == 1  # the run fails (recorded), the suite reports it
    (run,) = (tmp_path / "r" / "digits" / "triplet-hinge").glob("s0-*")
    reason = json.loads((run / "failed.json").read_text())["reason"]
    assert "no ImageNet weights for resnet18" in reason and "--weights FILE" in reason and "\n" not in reason


def test_pretrained_without_a_hub_fails_in_seconds_naming_weights(tmp_path, monkeypatch):
    """No network (every connection refused after a wait) and nothing cached: the run fails fast,
    without huggingface_hub's minute of retries, and names --weights FILE."""
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    monkeypatch.setenv("HF_ENDPOINT", "http://10.255.255.1:9")  # nowhere: a request gets no answer
    t0 = time.monotonic()
    r = bench("run", "--methods", "triplet-hinge", *RUN, "--pretrained", "--out", tmp_path / "r")
    assert r.exit_code == 1 and time.monotonic() - t0 < 30  # the run's own work included; the hub's part < 5 s
    (run,) = (tmp_path / "r" / "digits" / "triplet-hinge").glob("s0-*")
    reason = json.loads((run / "failed.json").read_text())["reason"]
    assert "cannot be reached" in reason and "--weights FILE" in reason


def test_hub_check_takes_at_most_its_timeout(monkeypatch):
    import time

    from dmlbench.blocks.trunks import HUB_TIMEOUT_S, hub_reachable

    monkeypatch.setenv("HF_ENDPOINT", "http://10.255.255.1:9")  # a non-routable address: the connect hangs
    t0 = time.monotonic()
    assert not hub_reachable()
    assert time.monotonic() - t0 < HUB_TIMEOUT_S + 1.5 and HUB_TIMEOUT_S <= 5
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: 1 / 0)  # offline: not even tried
    assert not hub_reachable()


def test_generative_methods_are_refused_on_a_trunk():
    from dmlbench.methods import EncoderChoice, get_method

    cls = get_method("vae")
    with pytest.raises(DMLBenchError, match="not defined on a timm trunk"):
        cls(cls.Params(), input_shape=(3, 32, 32), embedding_dim=8, encoder=EncoderChoice("timm:resnet18"),
            num_classes=4)
