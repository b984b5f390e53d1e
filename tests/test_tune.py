"""``bench tune`` on the bundled digits (1 epoch, mlp encoder): equal budgets, resume after a kill,
the same trials replayed from the same seed, failed trials, the test-set guard, ``--tuned``.

Everything but the subprocess-worker and full-MNIST checks (marked slow) runs in-process and small.
"""

from __future__ import annotations

import gzip
import json
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

optuna = pytest.importorskip("optuna")

from dmlbench import tune as T  # noqa: E402
from dmlbench.cli import app  # noqa: E402
from dmlbench.core.errors import DMLBenchError  # noqa: E402
from dmlbench.core.space import Float  # noqa: E402
from dmlbench.running import runner  # noqa: E402
from dmlbench.running import suite as T_suite  # noqa: E402
from dmlbench.running.suite import resolve_suite  # noqa: E402

# The tests ask trials by hand on a storage with a heartbeat, which Optuna warns about.
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")

SMALL = ["--dataset", "digits", "--epochs", "1", "--test-triplets", "100", "--threads", "1"]
N_VALID = 314  # digits: 1257 training images, a quarter of them (stratified) validates


def bench(*args, **kw):
    return CliRunner().invoke(app, [str(a) for a in args], **kw)


def ok(result):
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


def studies(suite_dir: Path) -> dict:
    storage = optuna.storages.RDBStorage(f"sqlite:///{suite_dir / 'study.db'}")
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=storage)
            for s in optuna.get_all_study_summaries(storage)}


def params_by_number(study) -> dict[int, dict]:
    return {t.number: t.params for t in study.get_trials()}


def trial_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if " trial " in ln and ln.startswith("  ")]


@pytest.fixture(autouse=True)
def _fast_heartbeat(monkeypatch):
    monkeypatch.setenv(T.options.HEARTBEAT_ENV, "1")
    monkeypatch.setenv(T.options.GRACE_ENV, "2")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The issue's tiny study: 2 methods, 3 trials each, 1 fold."""
    out = tmp_path_factory.mktemp("tune") / "results"
    mp = pytest.MonkeyPatch()
    mp.setenv(T.options.HEARTBEAT_ENV, "1")
    result = ok(bench("tune", "--methods", "siamese,triplet-hinge", "--trials", 3, "--out", out, *SMALL))
    mp.undo()
    return out / "digits" / "tune", result


# ----------------------------------------------------------------------------- the tiny study


def test_tiny_study_gives_every_method_the_same_budget(tiny):
    suite_dir, result = tiny
    doc = json.loads((suite_dir / "tuned.json").read_text())
    assert set(doc["methods"]) == {"siamese", "triplet-hinge"}  # raw trains nothing: not tuned
    assert doc["validation"] == "samples" and doc["folds"] == 1 and doc["objective"] == "map@r"
    for name, m in doc["methods"].items():
        assert m["states"]["COMPLETE"] == 3 and m["trials"] == 3 and m["study"] == name
        assert m["storage"].startswith("sqlite:///") and m["storage"].endswith("study.db")
        assert 0 < m["best_value"] <= 1 and m["best_trial"] in (0, 1, 2)
        assert set(m["run_params"]) == {"lr"} and "lr" not in m["method_params"]
        assert set(m["method_params"]) | set(m["run_params"]) == set(m["params"])
        assert m["trial_seconds"] > 0
        assert m["devices"] == {"cpu": 3}  # where the trials ran, from their run folders
    assert 0 < doc["tune_seconds"] <= doc["wall_seconds"] + 1
    assert "(trials ran on cpu (6); tuning time " in result.stdout
    # The summary table on stdout, progress on stderr; the choice of validation is said.
    assert "best map@r" in result.stdout and "siamese" in result.stdout
    assert "validation: samples folds" in result.stderr and "the test set is not read" in result.stderr
    assert len(trial_lines(result.stderr)) == 6

    folds = json.loads((suite_dir / "folds.json").read_text())
    assert folds["kind"] == "samples" and folds["k"] == 1 and folds["seed"] == 0 and len(folds["assignment"]) == 1257

    s = studies(suite_dir)
    assert set(s) == {"siamese", "triplet-hinge"}
    for name, study in s.items():
        assert [t.state.name for t in study.get_trials()] == ["COMPLETE"] * 3
        best = doc["methods"][name]
        assert study.best_trial.number == best["best_trial"] and study.best_value == pytest.approx(best["best_value"])
        # Every run: the same steps, scored on the validation fold, recorded as a trial.
        for t in study.get_trials():
            cfg = json.loads((Path(t.user_attrs["run_dir_fold0"]) / "config.json").read_text())
            assert cfg["tuned"]["role"] == "validation" and cfg["tuned"]["trial"] == t.number
            assert cfg["steps"] == (1257 - N_VALID) // 128 and cfg["data"]["test"] == N_VALID
            assert cfg["lr"] == pytest.approx(t.params["lr"])
            assert "/trials/fold0/" in t.user_attrs["run_dir_fold0"]


def test_rerun_of_a_finished_tune_runs_nothing(tiny, tmp_path):
    suite_dir, _ = tiny
    before = {n: len(st.get_trials()) for n, st in studies(suite_dir).items()}
    result = ok(bench("tune", "--methods", "siamese,triplet-hinge", "--trials", 3, "--out", suite_dir.parent.parent,
                      *SMALL))
    assert trial_lines(result.stderr) == []
    assert {n: len(st.get_trials()) for n, st in studies(suite_dir).items()} == before


def test_same_seed_in_a_fresh_folder_replays_the_same_trials(tiny, tmp_path):
    suite_dir, _ = tiny
    ok(bench("tune", "--methods", "siamese,triplet-hinge", "--trials", 3, "--out", tmp_path, *SMALL))
    first, again = studies(suite_dir), studies(tmp_path / "digits" / "tune")
    for name in first:
        assert params_by_number(again[name]) == params_by_number(first[name])
        assert [t.value for t in again[name].get_trials()] == pytest.approx([t.value for t in first[name].get_trials()])


def test_changed_conditions_on_resume_are_one_line_errors(tiny):
    suite_dir, _ = tiny
    out = suite_dir.parent.parent
    r = bench("tune", "--methods", "siamese", "--trials", 3, "--out", out, "--validation", "classes", *SMALL)
    assert r.exit_code == 2 and "folds.json" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    args = [a if a != "1" else "2" for a in SMALL]  # --epochs 2: another budget per trial
    r = bench("tune", "--methods", "siamese", "--trials", 3, "--out", out, *args)
    assert r.exit_code == 2 and "study 'siamese'" in r.stderr and "epochs 1 -> 2" in r.stderr


# ----------------------------------------------------------------------------- sampler


def _fake_objective(trial):
    x, y = trial.suggest_float("x", 1e-3, 1.0, log=True), trial.suggest_float("y", -1.0, 1.0)
    return (np.log10(x) + 1.5) ** 2 + (y - 0.3) ** 2


def _study(seed, storage=None):
    return optuna.create_study(study_name="m", storage=storage or optuna.storages.InMemoryStorage(),
                               sampler=T.storage.make_sampler(seed, "m"), load_if_exists=True)


def test_sampler_replays_and_resumes_deterministically_past_the_random_start():
    n = T.options.N_STARTUP + 4  # random trials, then TPE
    a, b = _study(7), _study(7)
    a.optimize(_fake_objective, n_trials=n)
    b.optimize(_fake_objective, n_trials=n)
    assert params_by_number(a) == params_by_number(b)
    storage = optuna.storages.InMemoryStorage()
    _study(7, storage).optimize(_fake_objective, n_trials=n // 2)
    _study(7, storage).optimize(_fake_objective, n_trials=n - n // 2)  # a new process: a new sampler, same storage
    assert params_by_number(optuna.load_study(study_name="m", storage=storage)) == params_by_number(a)
    c = _study(8)
    c.optimize(_fake_objective, n_trials=3)
    assert params_by_number(c)[0] != params_by_number(a)[0]


def test_a_requeued_interrupted_trial_does_not_shift_the_later_proposals():
    """An interrupted trial is failed and re-queued as a copy with a trial number of its own; the
    trials proposed after it are still those of an uninterrupted study (issue: a resumed tune must
    replay the same trials)."""
    n = T.options.N_STARTUP + 3
    a = _study(3)
    a.optimize(_fake_objective, n_trials=n)
    storage = optuna.storages.InMemoryStorage()
    b = _study(3, storage)
    b.optimize(_fake_objective, n_trials=2)
    cut = b.ask()
    _fake_objective(cut)  # proposes its parameters, then the tune is interrupted
    b.tell(cut, state=optuna.trial.TrialState.FAIL)
    T.storage._retry_callback()(b, storage.get_trial(cut._trial_id))
    _study(3, storage).optimize(_fake_objective, n_trials=n - 2)  # the copy, then the rest
    done = [t.params for t in optuna.load_study(study_name="m", storage=storage).get_trials()
            if t.state == optuna.trial.TrialState.COMPLETE]
    assert done == [t.params for t in a.get_trials()]


# ----------------------------------------------------------------------------- kill and resume


@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_killed_tune_resumes_with_only_the_missing_trials(tmp_path, storage):
    """A tune killed during trial 2: its trial stays RUNNING with a heartbeat that stops. The resumed
    tune fails it, re-queues it with the same parameters, and runs only that one."""
    suite_dir = tmp_path / "digits" / "tune"
    url = f"journal:{tmp_path / 'journal.log'}" if storage == "journal" else None
    extra = ["--storage", url] if url else []
    ok(bench("tune", "--methods", "siamese", "--trials", 2, "--out", tmp_path, *extra, *SMALL))
    study = optuna.load_study(study_name="siamese", storage=T.storage.open_storage(url or T.storage.default_storage(suite_dir)),
                              sampler=T.storage.make_sampler(0, "siamese"))
    killed = study.ask()
    plan = T.spaces.method_plan("siamese", None, {})
    T.spaces.suggest(killed, plan.space)
    if storage == "sqlite":
        study._storage.record_heartbeat(killed._trial_id)
    time.sleep(3.5)  # > the grace period of 2 s (GRACE env) without a heartbeat

    result = ok(bench("tune", "--methods", "siamese", "--trials", 3, "--out", tmp_path, *extra, *SMALL))
    assert len(trial_lines(result.stderr)) == 1
    storage = T.storage.open_storage(url or T.storage.default_storage(suite_dir))
    trials = optuna.load_study(study_name="siamese", storage=storage).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
    assert trials[3].system_attrs["failed_trial"] == 2 and trials[3].params == trials[2].params
    doc = json.loads((suite_dir / "tuned.json").read_text())["methods"]["siamese"]
    assert doc["trials"] == 3 and doc["states"]["COMPLETE"] == 3 and doc["states"]["FAIL"] == 0
    assert doc["states"]["RETRIED"] == 1


def test_resumed_trial_has_the_parameters_the_uninterrupted_tune_gave_it(tiny, tmp_path):
    """Same seed, same trial number: the killed trial's re-queued parameters are those trial 2 of the
    uninterrupted tiny study got."""
    suite_dir, _ = tiny
    s = optuna.create_study(study_name="siamese", storage=T.storage.open_storage(T.storage.default_storage(tmp_path / "s")),
                            sampler=T.storage.make_sampler(0, "siamese"))
    for _ in range(3):
        t = s.ask()
        T.spaces.suggest(t, T.spaces.method_plan("siamese", None, {}).space)
        s.tell(t, 0.5)  # the random start: the values do not steer the first 3 trials
    assert params_by_number(s) == params_by_number(studies(suite_dir)["siamese"])


# ----------------------------------------------------------------------------- failures


def test_failed_trial_is_fail_not_zero_and_the_study_goes_on(tmp_path, monkeypatch):
    real = runner.run_one

    def flaky(cfg, suite, **kw):
        if cfg.tuned.get("trial") == 1:
            return runner.RunResult(cfg, Path(suite), "failed", reason="loss term(s) contrastive became non-finite")
        return real(cfg, suite, **kw)

    monkeypatch.setattr(runner, "run_one", flaky)
    result = ok(bench("tune", "--methods", "siamese", "--trials", 3, "--out", tmp_path, *SMALL))
    assert "FAILED: loss term(s) contrastive became non-finite" in result.stderr
    suite_dir = tmp_path / "digits" / "tune"
    trials = studies(suite_dir)["siamese"].get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert trials[1].value is None and "non-finite" in trials[1].user_attrs["fail_reason"]
    doc = json.loads((suite_dir / "tuned.json").read_text())["methods"]["siamese"]
    assert doc["states"] == {"COMPLETE": 2, "PRUNED": 0, "FAIL": 1, "RUNNING": 0, "WAITING": 0, "RETRIED": 0}
    assert doc["trials"] == 3 and doc["best_trial"] in (0, 2)


def test_nan_loss_fails_every_trial_and_tuned_json_says_so(tmp_path):
    space = tmp_path / "space.toml"
    space.write_text("[siamese]\nlr = {low = 1e8, high = 1e9, log = true}\n")
    result = bench("tune", "--methods", "siamese", "--trials", 2, "--space", space, "--out", tmp_path, *SMALL)
    # A method with nothing to test fails the command (after the summary), naming the cause.
    assert result.exit_code == 1, (result.stdout, result.stderr)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: siamese: none of its 2 trials completed (first failure: ") and "non-finite" in last
    assert result.stderr.count("non-finite") == 3
    suite_dir = tmp_path / "digits" / "tune"
    doc = json.loads((suite_dir / "tuned.json").read_text())["methods"]["siamese"]
    assert doc["best_trial"] is None and doc["best_value"] is None and doc["states"]["FAIL"] == 2
    assert "(no complete trial)" in result.stdout
    suite = resolve_suite({}, {"methods": "siamese", "dataset": "digits"})
    with pytest.raises(DMLBenchError, match="no trial of siamese completed"):
        T.apply_tuned(suite, suite_dir)


def test_prune_reports_each_epoch_and_stops_the_trial(tmp_path, monkeypatch):
    # A pruner that stops any trial at its first report: map@r is never above 2.
    # work() looks _pruner up in dmlbench.tune.trial, so it is patched there.
    monkeypatch.setattr(T.trial, "_pruner", lambda prune: optuna.pruners.ThresholdPruner(lower=2.0))
    args = [a if a != "1" else "2" for a in SMALL]  # 2 epochs: a report after the first
    result = bench("tune", "--methods", "siamese", "--trials", 2, "--prune", "--out", tmp_path, *args)
    assert result.stderr.count("pruned at epoch 1") == 2 and "Traceback" not in result.stderr
    # Every trial pruned: nothing to test, so the command fails after its summary.
    assert result.exit_code == 1 and "error: siamese: none of its 2 trials completed;" in result.stderr
    suite_dir = tmp_path / "digits" / "tune"
    trials = studies(suite_dir)["siamese"].get_trials()
    assert [t.state.name for t in trials] == ["PRUNED", "PRUNED"]
    assert all(list(t.intermediate_values) == [0] and 0 < t.intermediate_values[0] <= 1 for t in trials)
    run = Path(trials[0].user_attrs["run_dir_fold0"])
    assert "pruned at epoch 1" in json.loads((run / "failed.json").read_text())["reason"]
    doc = json.loads((suite_dir / "tuned.json").read_text())["methods"]["siamese"]
    assert doc["states"]["PRUNED"] == 2 and doc["trials"] == 2 and doc["best_trial"] is None


# ----------------------------------------------------------------------------- spaces


def test_space_file_overrides_and_is_validated_like_set(tmp_path):
    good = {"margin": {"low": 0.2, "high": 2.0}, "lr": 0.002, "normalize": True}
    plan = T.spaces.method_plan("siamese", good, {})
    assert plan.space == {"margin": Float(0.2, 2.0)}  # lr fixed by a plain value
    assert plan.fixed == {"normalize": True} and plan.fixed_run == {"lr": 0.002}
    assert "margin" not in T.spaces.method_plan("siamese", None, {"margin": "0.5"}).space  # --set fixes it
    bad = [({"margn": {"low": 0.1, "high": 1.0}}, "unknown option siamese.margn"),
           ({"margin": {"low": -1.0, "high": 1.0}}, "margin"),
           ({"margin": {"low": 1.0}}, "expected low, high"),
           ({"mining": {"choices": ["random", "psychic"]}}, "not allowed")]
    for space, match in bad:
        with pytest.raises(DMLBenchError, match=match):
            T.spaces.method_plan("triplet-hinge" if "mining" in space else "siamese", space, {})
    with pytest.raises(DMLBenchError, match="fixed twice"):
        T.spaces.method_plan("siamese", {"margin": 1.0}, {"margin": "0.5"})
    f = tmp_path / "s.toml"
    f.write_text("[npair]\nlr = {low = 1e-4, high = 1e-3}\n")
    r = bench("tune", "--methods", "siamese", "--trials", 1, "--space", f, "--out", tmp_path, *SMALL)
    assert r.exit_code == 2 and "not among the methods being tuned" in r.stderr
    f.write_text("[siamese]\nmargn = {low = 0.1, high = 1}\n")
    r = bench("tune", "--methods", "siamese", "--trials", 1, "--space", f, "--out", tmp_path, *SMALL)
    assert r.exit_code == 2 and r.stderr.startswith("error: unknown option siamese.margn")
    r = bench("tune", "--methods", "siamese", "--trials", 1, "--objective", "svm_acc", "--out", tmp_path, *SMALL)
    assert r.exit_code == 2 and "retrieval metric" in r.stderr
    r = bench("tune", "--methods", "siamese", "--trials", 1, "--objective", "triplet_acc_margin", "--out", tmp_path,
              *SMALL)
    assert r.exit_code == 2 and "is never ranked" in r.stderr
    r = bench("tune", "--methods", "siamese,vae", "--trials", 1, "--objective", "recon_error", "--out", tmp_path,
              *SMALL)
    assert r.exit_code == 2 and "recon_error is measured only for methods that reconstruct" in r.stderr
    assert "siamese has none" in r.stderr
    # A TOML list is not a space, and says how to write one; an unquoted dotted key is the option.
    f.write_text("[siamese]\nmargin = [0.5, 1.0]\n")
    r = bench("tune", "--methods", "siamese", "--trials", 1, "--space", f, "--out", tmp_path, *SMALL)
    assert r.exit_code == 2 and "write margin = {choices = [0.5, 1.0]}" in r.stderr
    f.write_text("[tvae]\nweights.triplet = {low = 1, high = 30}\n")
    assert T.spaces.read_space_file(f) == {"tvae": {"weights.triplet": {"low": 1, "high": 30}}}
    f.write_text('[tvae]\n"weights.triplet" = {choices = [1, 2]}\nweights.kl = 0.5\n')
    assert T.spaces.read_space_file(f) == {"tvae": {"weights.triplet": {"choices": [1, 2]}, "weights.kl": 0.5}}
    assert not (tmp_path / "digits").exists()  # every check before any data or study


def test_validation_default_follows_the_test_protocol(digits):
    from dmlbench.data.splits import class_disjoint

    kind, why = T.folds.choose_validation(digits.without_test(), 1, None)
    assert kind == "samples" and "training classes" in why
    disjoint = class_disjoint(digits)  # 5 training classes: too few for 4 class-disjoint folds
    assert T.folds.choose_validation(disjoint, 1, None)[0] == "samples"
    from dataclasses import replace

    assert T.folds.choose_validation(replace(digits, split="classes"), 1, None)[0] == "classes"  # 10 >= 2 x 4
    assert T.folds.choose_validation(digits, 1, "classes") == ("classes", "--validation asks for them")


# ----------------------------------------------------------------------------- the test set is never read


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_tune_never_reads_the_test_set(data_dir, tmp_path):
    """Real MNIST training images (the first 2,000, so the test stays small), no t10k files at all:
    tuning succeeds, and loading the test set fails there."""
    from dmlbench.data import load_dataset
    from dmlbench.data.idx import read_idx

    folder = tmp_path / "data" / "mnist"
    folder.mkdir(parents=True)
    src = data_dir / "mnist"
    x = read_idx(next(src.glob("train-images-idx3-ubyte*")))[:2000]
    y = read_idx(next(src.glob("train-labels-idx1-ubyte*")))[:2000]
    _write_idx(folder / "train-images-idx3-ubyte.gz", x)
    _write_idx(folder / "train-labels-idx1-ubyte.gz", y)
    with pytest.raises(DMLBenchError, match="t10k"):
        load_dataset("mnist", data_dir=tmp_path / "data", options={"verify": False})
    result = ok(bench("tune", "--dataset", "mnist", "--data-dir", tmp_path / "data", "--set", "data.verify=false",
                      "--methods", "siamese", "--trials", 1, "--steps", 2, "--encoder", "mlp", "--batch-size", 32,
                      "--test-triplets", 100, "--threads", 1, "--out", tmp_path / "out"))
    assert "500 validation images" in result.stderr
    doc = json.loads((tmp_path / "out" / "mnist" / "tune" / "tuned.json").read_text())
    assert doc["methods"]["siamese"]["states"]["COMPLETE"] == 1


def test_class_disjoint_tune_never_shows_a_trial_a_test_class_image(data_dir, tmp_path, monkeypatch):
    """--split classes pools both files and keeps the first half of the classes: every image a trial
    trains or validates on is one of those classes' (from either file), and no image of a test class
    (from either file) ever reaches a trial, whatever its label says."""
    import traceback

    from dmlbench.data import Part
    from dmlbench.data.idx import read_idx

    folder = tmp_path / "data" / "mnist"
    folder.mkdir(parents=True)
    src = data_dir / "mnist"
    files = {}
    for part, n in (("train", 1500), ("t10k", 500)):
        files[part] = (read_idx(next(src.glob(f"{part}-images-idx3-ubyte*")))[:n],
                       read_idx(next(src.glob(f"{part}-labels-idx1-ubyte*")))[:n])
        _write_idx(folder / f"{part}-images-idx3-ubyte.gz", files[part][0])
        _write_idx(folder / f"{part}-labels-idx1-ubyte.gz", files[part][1])
    # Images by content: those of the test classes (5-9) and those of the training classes (0-4).
    test_class, train_class = set(), {}
    for part, (x, y) in files.items():
        for img, label in zip(x.reshape(len(x), -1), y):
            (test_class.add(img.tobytes()) if label >= 5 else train_class.setdefault(img.tobytes(), part))
    seen, read = [], []
    real_run, real_images = runner.run_one, Part.images

    def spy_run(cfg, run_dir, *args, data=None, **kw):
        seen.append(data)
        return real_run(cfg, run_dir, *args, data=data, **kw)

    def spy_images(self, idx=None):
        out = real_images(self, idx)
        if any(f.f_code is real_run.__code__ for f, _ in traceback.walk_stack(None)):
            read.append(out)                                 # read by a trial: batches, embeddings, triplets
        return out

    monkeypatch.setattr(runner, "run_one", spy_run)
    monkeypatch.setattr(Part, "images", spy_images)
    ok(bench("tune", "--dataset", "mnist", "--data-dir", tmp_path / "data", "--set", "data.verify=false",
             "--split", "classes", "--methods", "siamese", "--trials", 2, "--folds", 2, "--steps", 2,
             "--encoder", "mlp", "--batch-size", 32, "--test-triplets", 100, "--threads", 1, "--out", tmp_path / "out"))

    def contents(x):
        return {img.tobytes() for img in np.asarray(x).reshape(len(x), -1)}

    assert len(seen) == 4                                    # 2 trials x 2 folds
    # The loader reads both files to pool them; inside a trial, not one image of a test class is read.
    assert read and all(not (contents(x) & test_class) for x in read), "a trial read an image of a test class"
    shown = set()
    for fold in seen:
        for part in (fold.train, fold.test):                 # a fold's test part is its validation part
            images = contents(real_images(part))
            assert not images & test_class and images <= train_class.keys()
            shown |= images
    # Pooled: the trials train and validate on every image of the training classes, from both files.
    assert {train_class[img] for img in shown} == {"train", "t10k"}
    assert shown == train_class.keys()


@pytest.mark.slow
@pytest.mark.mnist
def test_tune_on_full_mnist_without_test_files(data_dir, tmp_path):
    folder = tmp_path / "data" / "mnist"
    folder.mkdir(parents=True)
    for f in (data_dir / "mnist").glob("train-*"):
        shutil.copy(f, folder / f.name)
    ok(bench("tune", "--dataset", "mnist", "--data-dir", tmp_path / "data", "--methods", "siamese", "--trials", 1,
             "--steps", 2, "--encoder", "mlp", "--batch-size", 32, "--test-triplets", 100, "--out", tmp_path / "out"))


# ----------------------------------------------------------------------------- from tuning to the table


def test_apply_tuned_gives_each_method_its_best_settings(tiny, tmp_path, caplog):
    suite_dir, _ = tiny
    doc = json.loads((suite_dir / "tuned.json").read_text())
    suite = resolve_suite({}, {"methods": "siamese,triplet-hinge,vae", "dataset": "digits"})
    tuned = T.apply_tuned(suite, suite_dir)
    assert tuned.methods == ["siamese", "triplet-hinge", "raw"]  # vae was not tuned; raw trains nothing
    assert "vae not tuned" in caplog.text and "unequal" not in caplog.text
    # A setting that the tuned one would silently replace is refused, method key or run key.
    margin = doc["methods"]["siamese"]["method_params"]["margin"]
    for flags, match in ((({"set": ["siamese.margin=3.5"]}), rf"--set siamese.margin=3.5 \(tuned: {margin}\)"),
                         ({"lr": 0.5}, r"--lr 0.5 \(tuned: ")):
        clash = resolve_suite({}, {"methods": "siamese", "dataset": "digits", **flags})
        with pytest.raises(DMLBenchError, match=match):
            T.apply_tuned(clash, suite_dir, run_flags={k: v for k, v in flags.items() if k == "lr"})
    # A base lr from a file or preset is no request: the tuned lr replaces it.
    lr = doc["methods"]["siamese"]["run_params"]["lr"]
    assert T.apply_tuned(resolve_suite({"lr": 0.5}, {"methods": "siamese", "dataset": "digits"}),
                         suite_dir).run_sets["siamese"]["lr"] == lr
    assert T.apply_tuned(resolve_suite({}, {"methods": "siamese", "dataset": "digits", "lr": lr}), suite_dir,
                         run_flags={"lr": lr}).run_sets["siamese"]["lr"] == lr
    same = resolve_suite({}, {"methods": "siamese", "dataset": "digits", "set": [f"siamese.margin={margin}"]})
    assert T.apply_tuned(same, suite_dir).method_sets["siamese"]["margin"] == margin
    assert tuned.seeds == [0, 1, 2, 3, 4]
    for name in ("siamese", "triplet-hinge"):
        m = doc["methods"][name]
        assert tuned.method_sets[name] == m["method_params"] and tuned.run_sets[name] == m["run_params"]
        assert tuned.tuned[name]["trial"] == m["best_trial"] and tuned.tuned[name]["study"] == name
    assert T.apply_tuned(suite, suite_dir, seeds_given=True).seeds == [0]
    cfg = T_suite.tuned_config(tuned, runner.with_method(tuned.base, "siamese", 0, {}))
    assert cfg.lr == pytest.approx(doc["methods"]["siamese"]["run_params"]["lr"]) and cfg.tuned["trial"] is not None

    with pytest.raises(DMLBenchError, match="does not exist"):
        T.apply_tuned(suite, tmp_path)
    (tmp_path / "tuned.json").write_text("{not json")
    with pytest.raises(DMLBenchError, match="corrupt"):
        T.apply_tuned(suite, tmp_path)
    with pytest.raises(DMLBenchError, match="tuned on digits"):
        T.apply_tuned(resolve_suite({}, {"methods": "siamese", "dataset": "mnist"}), suite_dir)


def test_expand_applies_tuned_run_keys_and_records_them(tiny):
    from dmlbench.running import suite as suite_mod

    suite_dir, _ = tiny
    doc = json.loads((suite_dir / "tuned.json").read_text())
    tuned = T.apply_tuned(resolve_suite({}, {"methods": "siamese", "dataset": "digits"}), suite_dir)
    planned = suite_mod.expand(tuned, 1257)
    by = {(p.config.method, p.config.seed): p.config for p in planned}
    assert len(by) == 10
    cfg = by[("siamese", 3)]
    assert cfg.lr == pytest.approx(doc["methods"]["siamese"]["run_params"]["lr"])
    assert cfg.tuned["trial"] == doc["methods"]["siamese"]["best_trial"]
    assert by[("raw", 0)].tuned == {}
    variant = next(p.variant for p in planned if p.config.method == "siamese")
    m = doc["methods"]["siamese"]
    assert variant == f"tuned:lr={m['run_params']['lr']:.4g};margin={m['method_params']['margin']:.4g}"


def test_bench_run_tuned_runs_the_best_settings(tiny, tmp_path):
    suite_dir, _ = tiny
    doc = json.loads((suite_dir / "tuned.json").read_text())
    ok(bench("run", "--tuned", suite_dir, "--methods", "siamese", "--seeds", 1, "--out", tmp_path, *SMALL))
    (run,) = (tmp_path / "digits" / "siamese").glob("s1-*")
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["method_params"]["margin"] == pytest.approx(doc["methods"]["siamese"]["method_params"]["margin"])


def test_runs_of_an_earlier_best_setting_leave_the_table_when_the_best_changes(tiny, tmp_path):
    """A study that goes on can crown another trial: `bench run --tuned` then archives the test runs
    of the old best to .stale/ and runs the new one, so the table keeps one row per method."""
    suite_dir, _ = tiny
    ok(bench("run", "--tuned", suite_dir, "--methods", "siamese", "--seeds", 1, "--out", tmp_path, *SMALL))
    (old,) = (tmp_path / "digits" / "siamese").glob("s1-*")
    # The same study, another winner: a copy of the tune folder whose tuned.json names another trial.
    moved_on = tmp_path / "tune-later"
    shutil.copytree(suite_dir, moved_on)
    doc = json.loads((moved_on / "tuned.json").read_text())
    m = doc["methods"]["siamese"]
    m["best_trial"] = m["best_trial"] + 1
    m["method_params"]["margin"] = m["params"]["margin"] = float(m["method_params"]["margin"]) + 0.125
    (moved_on / "tuned.json").write_text(json.dumps(doc))
    result = ok(bench("run", "--tuned", moved_on, "--methods", "siamese", "--seeds", 1, "--out", tmp_path, *SMALL))
    assert not old.exists()
    (archived,) = (tmp_path / "digits" / ".stale" / "siamese").glob(f"{old.name}-*")
    assert (archived / "metrics.json").is_file()
    (new,) = (tmp_path / "digits" / "siamese").glob("s1-*")
    assert json.loads((new / "config.json").read_text())["tuned"]["trial"] == m["best_trial"]
    rows = [line for line in (tmp_path / "digits" / "table.md").read_text().splitlines() if "| siamese" in line]
    assert len(rows) == 1 and "earlier best settings" in result.stderr
    # Running the current best again archives nothing.
    ok(bench("run", "--tuned", moved_on, "--methods", "siamese", "--seeds", 1, "--out", tmp_path, *SMALL))
    assert new.exists() and len(list((tmp_path / "digits" / ".stale" / "siamese").iterdir())) == 1


def test_bench_run_tuned_keeps_every_tuned_method_and_runs_in_the_tune_folder(tmp_path):
    """Without --methods, --tuned tests every tuned method (plugin and pml: ones too), with the tune's
    dataset and budget, into the tune's own folder; a tuned method that cannot run here is named,
    with the reason, and the others run."""
    plugin = tmp_path / "hinge_twin.py"
    plugin.write_text("from dmlbench.methods import register_method\n"
                      "from dmlbench.methods.triplet_hinge import TripletHinge\n\n\n"
                      "@register_method('hinge-twin')\nclass HingeTwin(TripletHinge):\n"
                      "    \"\"\"triplet-hinge under another name.\"\"\"\n")
    out = tmp_path / "results"
    ok(bench("tune", "--plugin", plugin, "--methods", "hinge-twin,pml:ContrastiveLoss", "--trials", 1, "--out", out,
             "--dataset", "digits", "--steps", 3, "--test-triplets", 60, "--threads", 1))
    tune_dir = out / "digits" / "tune"
    # No --dataset, no --methods: the tune's. (A registered plugin stays registered in this process,
    # so its absence is simulated by removing it from the registry.)
    from dmlbench.methods.base import METHODS

    twin = METHODS.get("hinge-twin")
    METHODS.remove("hinge-twin")
    try:
        r = ok(bench("run", "--tuned", tune_dir, "--seeds", 0, "--threads", 1))
    finally:
        METHODS.add("hinge-twin", twin)
    assert "hinge-twin left out: unknown method 'hinge-twin'" in r.stderr and "give --plugin" in r.stderr
    assert (tune_dir / "pml-ContrastiveLoss").is_dir() and (tune_dir / "raw").is_dir()
    r = ok(bench("run", "--tuned", tune_dir, "--plugin", plugin, "--seeds", 0, "--threads", 1))
    runs = sorted(p.parent.parent.name for p in tune_dir.glob("*/s0-*/metrics.json"))
    assert runs == ["hinge-twin", "pml-ContrastiveLoss", "raw"], runs
    cfg = json.loads(next((tune_dir / "hinge-twin").glob("s0-*/config.json")).read_text())
    assert cfg["dataset"] == "digits" and cfg["steps"] == 3 and cfg["tuned"]["trial"] == 0
    assert "| hinge-twin[tuned:" in r.stdout and "| pml:ContrastiveLoss[tuned:" in r.stdout
    assert not (out / "digits" / "hinge-twin").exists()  # not beside untuned runs


# ----------------------------------------------------------------------------- parallel workers


@pytest.mark.slow
def test_two_worker_processes_share_one_study_and_its_budget(tmp_path):
    result = ok(bench("tune", "--methods", "siamese,triplet-hinge", "--trials", 3, "--workers", 2, "--out", tmp_path,
                      "--dataset", "digits", "--epochs", "1", "--test-triplets", "100", "--threads", "2"))
    s = studies(tmp_path / "digits" / "tune")
    for study in s.values():
        assert sorted(t.number for t in study.get_trials()) == [0, 1, 2]
        assert all(t.state.name == "COMPLETE" for t in study.get_trials())
    assert "siamese" in result.stdout


def test_a_pool_of_tune_workers_has_a_driver_without_torch(tmp_path):
    """Trials run in the workers; the driver (a fresh interpreter here) must not import torch."""
    from helpers_cli import run_fresh

    run_fresh(["tune", "--methods", "siamese,triplet-hinge", "--trials", "1", "--folds", "1", "--steps", "3",
               "--test-triplets", "50", "--workers", "2", "--threads", "2", "--out", str(tmp_path)], forbidden=("torch",))
    assert all(len(s.get_trials()) == 1 for s in studies(tmp_path / "digits" / "tune").values())


def test_timeout_stops_starting_trials_and_a_rerun_evens_the_budget(tmp_path):
    args = ["tune", "--methods", "siamese,triplet-hinge", "--out", tmp_path, *SMALL]
    cut = ok(bench(*args, "--trials", 40, "--timeout", 2))
    suite_dir = tmp_path / "digits" / "tune"
    doc = json.loads((suite_dir / "tuned.json").read_text())
    counts = {name: m["trials"] for name, m in doc["methods"].items()}
    assert max(counts.values()) < 40 and doc["trials"] == 40
    assert max(counts.values()) - min(counts.values()) <= 1  # the method furthest behind goes next
    assert "warning: the tune stopped at" in cut.stderr and "re-run the same command" in cut.stderr.lower()
    # Every trial that started finished: nothing is left running for a resume to re-queue.
    assert all(t.state.name == "COMPLETE" for st in studies(suite_dir).values() for t in st.get_trials())
    top = max(max(counts.values()), 1)
    ok(bench(*args, "--trials", top))
    doc = json.loads((suite_dir / "tuned.json").read_text())
    assert {m["trials"] for m in doc["methods"].values()} == {top} and doc["trials"] == top


def test_timeout_must_be_positive(tmp_path):
    result = bench("tune", "--methods", "siamese", "--out", tmp_path, "--timeout", 0, *SMALL)
    assert result.exit_code != 0 and "timeout=0" in result.stderr and "positive" in result.stderr


def test_a_tune_of_some_methods_keeps_the_others_and_warns_of_unequal_budgets(tiny, tmp_path, caplog):
    suite_dir = tmp_path / "digits" / "tune"
    shutil.copytree(tiny[0], suite_dir)
    before = json.loads((suite_dir / "tuned.json").read_text())["methods"]["triplet-hinge"]
    r = ok(bench("tune", "--methods", "siamese", "--trials", 4, "--out", tmp_path, *SMALL))
    assert "warning: the methods had unequal tuning budgets (triplet-hinge 3, siamese 4 trials)" in r.stderr
    assert "--trials 4 with --methods naming all of them" in r.stderr
    doc = json.loads((suite_dir / "tuned.json").read_text())
    assert doc["methods"]["triplet-hinge"] == before and doc["methods"]["siamese"]["trials"] == 4
    suite = resolve_suite({}, {"methods": "siamese,triplet-hinge", "dataset": "digits"})
    T.apply_tuned(suite, suite_dir)
    assert "unequal tuning budgets" in caplog.text
    caplog.clear()
    T.apply_tuned(resolve_suite({}, {"methods": "siamese", "dataset": "digits"}), suite_dir)
    assert "unequal" not in caplog.text  # one method alone is compared with nothing


def test_folds_too_small_to_score_are_refused_before_any_trial(tmp_path):
    r = bench("tune", "--methods", "siamese", "--trials", 1, "--folds", 99, "--out", tmp_path, *SMALL)
    assert r.exit_code == 2, r.stderr
    line = r.stderr.strip()
    assert line.startswith("error: --folds 99: validation fold ") and "use fewer --folds (at most " in line
    assert len(line.splitlines()) == 1 and not (tmp_path / "digits").exists()


def test_tune_minutes_count_the_time_trials_ran_not_the_gaps_between_sessions():
    from datetime import datetime, timedelta

    from dmlbench.tune.summary import _busy_seconds

    t0 = datetime(2026, 12, 1, 9)
    m = timedelta(minutes=1)
    # Two overlapping trials (9:00-9:02, 9:01-9:03), then a resume a day later (one 2-minute trial).
    spans = [(t0 + m, t0 + 3 * m), (t0, t0 + 2 * m), (t0 + timedelta(days=1), t0 + timedelta(days=1) + 2 * m)]
    assert _busy_seconds(spans) == 5 * 60
    assert _busy_seconds([]) == 0


def test_trial_devices_finds_the_run_folders_of_a_study_copied_from_another_machine(tmp_path):
    """A study tuned partly on a GPU machine and copied here: its trials' run folders are found under
    this suite's trials/ though they recorded the other machine's paths."""
    from types import SimpleNamespace

    from dmlbench.tune.summary import trial_devices

    def run(name, device):
        d = tmp_path / "suite" / "trials" / "fold0" / "siamese" / name
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"provenance": {"device": device}}))
        return SimpleNamespace(user_attrs={"run_dir_fold0": f"/elsewhere/suite/trials/fold0/siamese/{name}",
                                           "fold0": 0.5})

    trials = [run("s0-a", {"device": "cuda", "gpu": "NVIDIA H200"}), run("s0-b", {"device": "cuda:1", "gpu":
              "NVIDIA H200"}), run("s0-c", {"device": "cpu"}), SimpleNamespace(user_attrs={})]
    (tmp_path / "suite" / "trials" / "fold0" / "siamese" / "s0-c" / "config.json").write_text("{broken")
    trials.append(run("s0-d", {"device": "cpu"}))
    assert trial_devices(trials, tmp_path / "suite") == {"cpu": 1, "cuda:NVIDIA H200": 2, "unknown": 2}


def test_a_storage_that_refuses_the_study_leaves_no_folder_or_folds(tmp_path):
    r = bench("tune", "--methods", "siamese", "--trials", 1, "--storage", "bogus://x", "--out", tmp_path, *SMALL)
    assert r.exit_code == 2 and r.stderr.startswith("error: cannot open the study storage bogus://x")
    assert not (tmp_path / "digits").exists()


@pytest.mark.slow  # processes killed, timeouts or a Ray cluster: CI runs it with -m slow
def test_two_tunes_share_one_postgresql_study_and_its_budget(tmp_path):
    """Two `bench tune` processes (two machines, here one) on one PostgreSQL study: each method gets
    exactly --trials trials, numbered once, and both processes ran trials."""
    import subprocess
    import sys

    from helpers_postgres import postgres_server

    with postgres_server() as url:
        cmd = [sys.executable, "-m", "dmlbench.cli", "tune", "--methods", "siamese,triplet-hinge", "--trials", "3",
               "--storage", url, "--out", str(tmp_path), "--dataset", "digits", "--steps", "20",
               "--test-triplets", "100", "--threads", "1"]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outs = [p.communicate(timeout=600) for p in procs]
        for p, (_, err) in zip(procs, outs):
            assert p.returncode == 0, err[-3000:]
        ran = [len(trial_lines(err)) for _, err in outs]
        assert sum(ran) == 6 and min(ran) >= 1, ran  # the budget split between them, no trial twice
        storage = optuna.storages.RDBStorage(url)
        for name in ("siamese", "triplet-hinge"):
            trials = optuna.load_study(study_name=name, storage=storage).get_trials()
            assert sorted(t.number for t in trials) == [0, 1, 2]
            assert all(t.state.name == "COMPLETE" for t in trials)
        doc = json.loads((tmp_path / "digits" / "tune" / "tuned.json").read_text())
        assert doc["storage"] == url and {m["trials"] for m in doc["methods"].values()} == {3}
        assert not (tmp_path / "digits" / "tune" / "study.db").exists()  # the study is in PostgreSQL only


# ----------------------------------------------------------------------------- budgets kept equal


def test_a_later_tune_of_other_methods_under_other_conditions_is_refused(tiny, tmp_path):
    suite_dir = tmp_path / "digits" / "tune"
    shutil.copytree(tiny[0], suite_dir)
    args = [a if a != "1" else "2" for a in SMALL]  # --epochs 2: another budget per trial than the others had
    r = bench("tune", "--methods", "npair", "--trials", 1, "--out", tmp_path, *args)
    assert r.exit_code == 2 and "was tuned under other conditions (epochs 1 -> 2" in r.stderr
    assert "every method of a suite is tuned alike" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = bench("tune", "--methods", "npair", "--trials", 1, "--objective", "recall@1", "--out", tmp_path, *SMALL)
    assert r.exit_code == 2 and "objective map@r -> recall@1" in r.stderr
    assert "npair" not in studies(suite_dir)  # nothing was made


def test_run_flags_fix_run_keys_and_dead_dimensions_are_refused():
    plan = T.spaces.method_plan("siamese", None, {}, {"lr": 0.01}, "adam")
    assert "lr" not in plan.space and plan.fixed_run == {"lr": 0.01} and "margin" in plan.space
    assert T.spaces.method_plan("siamese", None, {}, {"weight_decay": 0.1}, "adam").fixed_run == {}  # not searched anyway
    momentum = {"momentum": {"low": 0.0, "high": 0.99}}
    with pytest.raises(DMLBenchError, match="the adam optimizer has no momentum setting"):
        T.spaces.method_plan("siamese", momentum, {}, {}, "adam")
    assert "momentum" in T.spaces.method_plan("siamese", momentum, {}, {}, "sgd").space
    assert "momentum" in T.spaces.method_plan("siamese", momentum, {}, {}, "rmsprop").space
    with pytest.raises(DMLBenchError, match="fixed twice"):
        T.spaces.method_plan("siamese", {"lr": 0.002}, {}, {"lr": 0.01}, "adam")
    # A loss's own option named like a run key is the loss's (DynamicSoftMarginLoss's momentum).
    name = "pml:DynamicSoftMarginLoss"
    assert "momentum" in T.spaces.method_plan(name, None, {}, {}, "adam").space
    assert T.spaces.split_params({"momentum": 0.05, "lr": 0.001}, name) == ({"momentum": 0.05}, {"lr": 0.001})
    assert T.spaces.split_params({"momentum": 0.5, "lr": 0.001}, "siamese") == ({}, {"momentum": 0.5, "lr": 0.001})


def test_a_space_table_for_an_untrained_method_is_refused(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text("[raw]\nlr = {low = 1e-4, high = 1e-3}\n")
    r = bench("tune", "--methods", "siamese", "--trials", 1, "--space", f, "--out", tmp_path, *SMALL)
    assert r.exit_code == 2 and "has a [raw] table, but raw trains nothing" in r.stderr


def test_tune_lr_flag_is_fixed_and_its_tuned_run_needs_no_flag(tmp_path):
    r = ok(bench("tune", "--methods", "siamese", "--trials", 1, "--lr", "0.003", "--out", tmp_path, *SMALL))
    assert "fixed lr=0.003" in r.stderr
    suite_dir = tmp_path / "digits" / "tune"
    m = json.loads((suite_dir / "tuned.json").read_text())["methods"]["siamese"]
    assert m["run_params"]["lr"] == 0.003 and "lr" not in m["params"]
    tuned = T.apply_tuned(resolve_suite({}, {"methods": "siamese", "dataset": "digits"}), suite_dir)
    assert tuned.run_sets["siamese"]["lr"] == 0.003
    from dmlbench.running.suite import expand

    variant = expand(tuned, 1257)[0].variant  # the label keeps what was held fixed apart from what was tuned
    assert variant == f"tuned;margin={m['method_params']['margin']:.4g};fixed:lr=0.003"


def test_interrupts_never_use_up_a_trial_and_worker_deaths_are_retried_three_times(tmp_path):
    from dmlbench.tune.storage import _Retry, requeue_interrupted

    storage = T.storage.open_storage(T.storage.default_storage(tmp_path))
    study = optuna.create_study(study_name="m", storage=storage)
    for _ in range(T.options.MAX_RETRY + 3):  # interrupted again and again: re-queued every time
        trial = study.ask()  # the waiting copy, after the first
        trial.suggest_float("x", 0.0, 1.0)
        assert requeue_interrupted(study, trial._trial_id)
    finished, running, waiting = T.storage.budget(study)
    assert (len(finished), len(running), len(waiting)) == (0, 0, 1)
    assert len({t.params["x"] for t in study.get_trials()}) == 1  # the same parameters throughout

    def die(t):  # a worker's death: FAIL, then Optuna's retry callback
        storage.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.FAIL)
        _Retry()(study, storage.get_trial(t._trial_id))

    for _ in range(T.options.MAX_RETRY):
        die(study.ask())
    assert len(T.storage.budget(study)[2]) == 1  # still retried: the interrupts used up none of the 3
    die(study.ask())
    finished, running, waiting = T.storage.budget(study)
    assert (len(finished), len(waiting)) == (1, 0) and finished[0].state.name == "FAIL"


def test_an_interrupted_trial_whose_worker_died_before_re_queuing_it_is_re_queued_once(tmp_path, monkeypatch):
    """A pool terminates its other workers as soon as one exits: one can die after failing its
    trial as interrupted and before adding the copy. Its driver (own trials, once the workers are
    gone) or a later tune (anyone's, after the grace) adds the copy, once; crashes are not copied."""
    from dmlbench.tune import storage as S

    study = optuna.create_study(study_name="m", storage=T.storage.open_storage(T.storage.default_storage(tmp_path)))

    def start(run_id):
        trial = study.ask()
        trial.suggest_float("x", 0.0, 1.0)
        study._storage.set_trial_system_attr(trial._trial_id, S.RUN_TAG, run_id)
        return trial

    def terminated(self, study, trial):  # SIGTERM between the FAIL and the copy
        raise SystemExit(-15)

    ours, theirs = start("ours"), start("theirs")
    with monkeypatch.context() as m:
        m.setattr(S._Retry, "__call__", terminated)
        for t in (ours, theirs):
            with pytest.raises(SystemExit):
                S.requeue_interrupted(study, t._trial_id)
    crashed = start("ours")
    study.tell(crashed, state=optuna.trial.TrialState.FAIL)  # the method's own failure: no copy
    assert [t.state.name for t in study.get_trials()] == ["FAIL", "FAIL", "FAIL"]

    assert S.requeue_orphans(study, min_age_s=120) == 0  # a later tune leaves fresh ones alone
    assert S.requeue_orphans(study, run_id="ours") == 1  # the driver: its own trial only
    assert S.requeue_orphans(study, run_id="ours") == 0  # once
    waiting = T.storage.budget(study)[2]
    assert len(waiting) == 1 and waiting[0].params == ours.params
    assert S.requeue_orphans(study) == 1  # a later tune, past the grace: the other tune's
    assert S.requeue_orphans(study) == 0
    finished, _, waiting = T.storage.budget(study)
    assert [t.number for t in finished] == [crashed.number]  # the orphans do not use up trials
    assert sorted(t.params["x"] for t in waiting) == sorted([ours.params["x"], theirs.params["x"]])
    copy = study.ask()  # a copy that then crashes is not an orphan
    study.tell(copy, state=optuna.trial.TrialState.FAIL)
    assert S.requeue_orphans(study) == 0


def test_a_tune_stopped_before_a_methods_first_trial_is_not_a_failure():
    doc = {"trials": 4, "methods": {"a": {"trials": 1, "best_trial": 0}, "b": {"trials": 0, "best_trial": None}}}
    assert T.failed_methods(doc) == {}
    assert "re-run the same command" in T.budget_warnings(doc)[0]
    del doc["methods"]["a"]["trials"]  # a hand-edited tuned.json: no traceback
    assert T.budget_warnings(doc)


def test_a_hand_edited_tuned_json_cannot_change_the_steps_or_seed(tiny, tmp_path):
    suite_dir = tmp_path / "t"
    shutil.copytree(tiny[0], suite_dir)
    doc = json.loads((suite_dir / "tuned.json").read_text())
    doc["methods"]["siamese"]["run_params"]["steps"] = 5
    (suite_dir / "tuned.json").write_text(json.dumps(doc))
    with pytest.raises(DMLBenchError, match="run_params set steps, which are not tuned run keys"):
        T.apply_tuned(resolve_suite({}, {"methods": "siamese", "dataset": "digits"}), suite_dir)


@pytest.mark.slow  # processes killed, timeouts or a Ray cluster: CI runs it with -m slow
def test_ctrl_c_at_the_terminal_requeues_every_running_trial_of_a_worker_pool(tmp_path):
    """A terminal's Ctrl-C reaches the driver and every worker (a process group), and the driver
    passes it on again: every running trial must still be re-queued at once, none left RUNNING."""
    import os
    import signal
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "dmlbench.cli", "tune", "--methods", "siamese,triplet-hinge", "--trials", "2",
           "--workers", "2", "--threads", "2", "--dataset", "digits", "--steps", "100000", "--test-triplets", "100",
           "--out", str(tmp_path)]
    # Its own session, with SIGINT at its default (a suite started with `&` inherits it ignored).
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    db = tmp_path / "digits" / "tune" / "study.db"
    deadline = time.time() + 120
    running = 0
    while time.time() < deadline and p.poll() is None:
        time.sleep(1)
        if db.exists():
            try:
                running = sum(t.state.name == "RUNNING" for s in studies(db.parent).values() for t in s.get_trials())
            except Exception:  # noqa: BLE001 - the studies are being made
                continue
            if running == 2:
                break
    assert running == 2, p.stderr.read() if p.poll() is not None else "no two trials running"
    time.sleep(2)
    os.killpg(p.pid, signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err[-2000:]
    trials = [t for s in studies(db.parent).values() for t in s.get_trials()]
    assert not [t for t in trials if t.state.name == "RUNNING"], err[-2000:]
    interrupted = [t for t in trials if t.state.name == "FAIL"]
    assert len(interrupted) == 2 and all(t.user_attrs["fail_reason"] == "interrupted" for t in interrupted)
    assert sum(t.state.name == "WAITING" for t in trials) == 2


def test_a_train_only_npz_file_can_be_tuned_but_not_tested(tmp_path):
    rng = np.random.default_rng(0)
    f = tmp_path / "train_only.npz"
    np.savez(f, x_train=rng.integers(0, 255, (200, 8, 8), dtype=np.uint8), y_train=np.repeat(np.arange(10), 20))
    args = ["--methods", "siamese", "--dataset", f"npz:{f}", "--steps", "5", "--test-triplets", "50", "--threads", "1",
            "--out", tmp_path]
    r = ok(bench("tune", *args, "--trials", 1, "--prune"))
    assert "with --trials 1 it prunes nothing" in r.stderr
    r = bench("run", *args)
    assert r.exit_code == 2 and "lacks array(s) x_test, y_test" in r.stderr


# ----------------------------------------------------------------------------- tunes started at once (#34)

def test_tunes_started_at_once_on_a_new_suite_take_turns_creating_its_study(tmp_path):
    """The quick variant of the test below: only the study's creation, by 4 threads released at
    once by a barrier (each opens its own storage and lock file, as a process does), 3 times.
    Without the creation lock most rounds end in a lost schema race ("UNIQUE constraint failed:
    alembic_version", an AssertionError) or in "attempt to write a readonly database" after a
    refused one removed the study file the others had open."""
    import threading

    import numpy as np

    from dmlbench.tune import options as T_options
    from dmlbench.tune import study as T_study
    from dmlbench.tune.storage import default_storage

    suite = resolve_suite({}, {"methods": "siamese,triplet-hinge", "dataset": "digits"})
    opts = T_options.TuneOptions(trials=1)
    plans, _ = T_study.plan_tune(suite, opts)
    n = 4
    for r in range(3):
        suite_dir = tmp_path / f"round{r}" / "suite"
        job = T_options.Job(suite, plans, opts, "stratified", np.arange(40) % 4, default_storage(suite_dir),
                            suite_dir, ["map@r"], [0])
        barrier, errors = threading.Barrier(n), []

        def create():
            barrier.wait()
            try:
                T_study.open_studies(job)
            except Exception as e:  # noqa: BLE001 - collected, asserted below
                errors.append(f"{type(e).__name__}: {e}")

        threads = [threading.Thread(target=create) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        s = studies(suite_dir)
        assert set(s) == {"siamese", "triplet-hinge"}
        assert all(st.user_attrs["dmlbench"]["validation"] == "stratified" for st in s.values())
        assert json.loads((suite_dir / "folds.json").read_text())["kind"] == "stratified"


@pytest.mark.slow
def test_four_bench_tunes_started_at_once_on_a_new_suite_share_the_budget_exactly(tmp_path):
    """Issue #34: four `bench tune` processes started at the same moment on a new suite (the default
    SQLite study), three times: each exits 0, and each method has exactly 5 complete trials."""
    from helpers_cli import run_at_once

    for r in range(3):
        out, barrier = tmp_path / f"round{r}", tmp_path / f"barrier{r}"
        barrier.mkdir()
        results = run_at_once(["tune", "--methods", "triplet-hinge,siamese", "--dataset", "digits", "--trials", "5",
                               "--folds", "1", "--steps", "4", "--test-triplets", "100", "--threads", "1",
                               "--out", str(out)], 4, barrier)
        for res in results:
            assert res.returncode == 0 and "error" not in res.stderr.lower(), res.stderr[-3000:]
            assert "Traceback" not in res.stderr
        assert sum(len(trial_lines(res.stderr)) for res in results) == 10  # no trial ran twice
        for name, study in studies(out / "digits" / "tune").items():
            trials = study.get_trials()
            assert sorted(t.number for t in trials) == [0, 1, 2, 3, 4], name
            assert all(t.state.name == "COMPLETE" for t in trials), name


def test_a_tune_that_cannot_get_the_creation_lock_says_so_and_who_holds_it(tmp_path, monkeypatch):
    from dmlbench.core.locks import Lock
    from dmlbench.tune import study as T_study

    monkeypatch.setattr(T_study, "CREATION_LOCK_TIMEOUT_S", 0.5)
    holder = Lock(tmp_path / "digits" / "tune" / ".study.db.dmlbench-lock")
    assert holder.acquire()  # another tune, stuck while it creates the study
    try:
        r = bench("tune", "--methods", "siamese", "--trials", 1, "--out", tmp_path, *SMALL)
    finally:
        holder.release()
    line = r.stderr.strip()
    assert r.exit_code == 2 and len(line.splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert line.startswith("error: timed out after 0 s waiting for the lock ") and "held by process" in line
    assert "damaged" not in line
    assert not (tmp_path / "digits" / "tune" / "study.db").exists()


def test_a_lock_file_removed_by_its_holder_is_not_held_by_two_processes(tmp_path):
    """A refused tune removes the creation lock it made while another waits on it: the waiter then
    locks the file now at that name, so it and a newcomer never both hold "the" lock."""
    import threading

    from dmlbench.core.locks import Lock

    path = tmp_path / ".lock"
    first, waiter = Lock(path), Lock(path)
    assert first.acquire()
    got = threading.Event()
    t = threading.Thread(target=lambda: (waiter.acquire(), got.set()))
    t.start()
    time.sleep(0.3)
    path.unlink()  # the holder's undo, while it still holds the lock
    first.release()
    assert got.wait(10)
    t.join()
    newcomer = Lock(path)
    assert not newcomer.acquire(blocking=False)  # the waiter holds the file at the name
    waiter.release()
    assert newcomer.acquire(blocking=False)
    newcomer.release()


# ----------------------------------------------------------------------------- storage errors name their cause


def _sqlite_study(tmp_path) -> str:
    from dmlbench.tune.storage import open_storage

    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="siamese", storage=open_storage(url))
    return url


def test_a_read_only_study_is_said_to_be_read_only_not_damaged(tmp_path):
    from dmlbench.tune.storage import storage_errors

    url = _sqlite_study(tmp_path)
    read_only = optuna.storages.RDBStorage(f"sqlite:///file:{tmp_path / 'study.db'}?mode=ro&uri=true")
    with pytest.raises(DMLBenchError) as e, storage_errors(url):
        optuna.create_study(study_name="other", storage=read_only)
    msg = str(e.value)
    assert f"study storage {tmp_path / 'study.db'} cannot be written" in msg and "readonly database" in msg
    assert "damaged" not in msg and "\n" not in msg


def test_a_study_locked_too_long_is_said_to_be_locked_not_damaged(tmp_path):
    import sqlite3

    from dmlbench.tune.storage import storage_errors

    url = _sqlite_study(tmp_path)
    con = sqlite3.connect(tmp_path / "study.db")
    con.execute("BEGIN EXCLUSIVE")  # another process in the middle of a long write
    try:
        with pytest.raises(DMLBenchError) as e, storage_errors(url):
            busy = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 0.1}})
            optuna.create_study(study_name="other", storage=busy)
    finally:
        con.rollback()
        con.close()
    msg = str(e.value)
    assert "locked" in msg and "damaged" not in msg and "\n" not in msg, msg


def test_only_a_damaged_study_file_is_called_damaged(tmp_path):
    bad = tmp_path / "digits" / "tune" / "study.db"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a database " * 400)
    r = bench("tune", "--methods", "siamese", "--trials", 1, "--out", tmp_path, *SMALL)
    line = r.stderr.strip()
    assert r.exit_code == 2 and len(line.splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"study storage {bad.resolve()} is damaged" in line and "move it aside" in line


def test_a_storage_failing_in_a_worker_is_one_line_and_the_trial_is_not_failed(tmp_path, monkeypatch):
    """A storage error in the middle of a tune (here: the commit of a trial's attribute) reaches the
    user as one line naming it, never as a traceback, and the trial is not counted as FAIL."""
    import sqlalchemy.exc

    real = optuna.trial.Trial.set_user_attr

    def failing(self, key, value):
        if key.startswith("fold"):
            cause = sqlalchemy.exc.OperationalError("UPDATE", {}, Exception("attempt to write a readonly database"))
            try:
                raise cause
            except sqlalchemy.exc.OperationalError as e:
                raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from e
        return real(self, key, value)

    monkeypatch.setattr(optuna.trial.Trial, "set_user_attr", failing)
    r = bench("tune", "--methods", "siamese", "--trials", 2, "--out", tmp_path, *SMALL)
    assert r.exit_code == 2 and "Traceback" not in r.stderr, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: study storage ") and "cannot be written" in line and "damaged" not in line
    monkeypatch.undo()
    trials = studies(tmp_path / "digits" / "tune")["siamese"].get_trials()
    assert not [t for t in trials if t.state.name == "FAIL" and t.user_attrs.get("fail_reason") != "interrupted"]


def test_best_settings_at_the_edge_of_their_range_are_named(tiny):
    from dmlbench.core.space import Float, Int
    from dmlbench.tune.summary import edge_warnings

    lr = Float(1e-4, 1e-2, log=True)
    assert lr.at_edge(1.2e-4) and lr.at_edge(9e-3) and not lr.at_edge(1e-3)
    assert Int(1, 21).at_edge(1) and not Int(1, 21).at_edge(11)
    suite_dir, _ = tiny
    doc = json.loads((suite_dir / "tuned.json").read_text())
    for name, m in doc["methods"].items():               # the real tune recorded them, by the same rule
        space = T.spaces.method_plan(name, None, {}).space
        assert m["at_edge"] == sorted(k for k, d in space.items() if hasattr(d, "at_edge") and d.at_edge(m["params"][k]))
    doc["methods"]["siamese"].update(at_edge=["lr"], params={**doc["methods"]["siamese"]["params"], "lr": 0.0099},
                                     space={**doc["methods"]["siamese"]["space"], "lr": str(lr)})
    lines = edge_warnings(doc)
    assert lines == ["siamese's best lr=0.0099 in log-uniform[0.0001, 0.01] lies at the edge of its search range: "
                     "the best setting may lie beyond it; widen the range (--space FILE.toml) and tune again"]
