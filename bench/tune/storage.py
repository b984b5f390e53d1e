"""Optuna plumbing: the seeded sampler, storages, heartbeats and the per-method budget."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from dmlbench.core.errors import DiskFullError, DMLBenchError, is_disk_full
from dmlbench.core.locks import Lock
from dmlbench.running import layout
from dmlbench.tune.options import GRACE_ENV, HEARTBEAT_ENV, MAX_RETRY, N_STARTUP

log = logging.getLogger("dmlbench")


# ----------------------------------------------------------------------------- optuna plumbing


def import_optuna():
    """Optuna, quiet, or a one-line install hint."""
    try:
        import optuna
    except ImportError:
        raise DMLBenchError("bench tune needs Optuna: pip install 'dmlbench[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def trial_seed(seed: int, method: str, number: int) -> int:
    """A 32-bit seed from (seed, method, trial place), the same in any process (a SHA-256, not ``hash``)."""
    digest = hashlib.sha256(f"{seed}/{method}/{number}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def make_sampler(seed: int, method: str):
    """TPE whose random state is re-seeded from (seed, method, trial's place) before every trial.

    Its first ``N_STARTUP`` trials are random, whatever the budget, so that a study extended with
    a larger ``--trials`` proposes what a fresh one with that budget would."""
    optuna = import_optuna()

    class SeededTPESampler(optuna.samplers.TPESampler):
        def before_trial(self, study, trial):
            # Seeded by the trial's place among the trials that are not re-queued copies of an
            # interrupted or killed one: a resumed study then proposes what an uninterrupted one
            # did (a copy takes a trial number of its own, which would shift every later seed).
            place = sum(1 for t in study.get_trials(deepcopy=False)
                        if t.number < trial.number and "failed_trial" not in t.system_attrs)
            s = trial_seed(seed, method, place)
            try:
                self._rng.rng.seed(s)
                self._random_sampler._rng.rng.seed(s)
            except AttributeError:
                raise DMLBenchError(f"this Optuna ({optuna.__version__}) has another TPESampler inside; "
                                    "bench tune's reproducible sampler needs optuna 3.4-5.x") from None
            super().before_trial(study, trial)

    return SeededTPESampler(seed=trial_seed(seed, method, -1), n_startup_trials=N_STARTUP)


INTERRUPTS = "dmlbench:interrupts"  # a trial's system attr: how many of its re-queues were interrupts
RUN_TAG = "dmlbench:run"  # a trial's system attr: the tune (driver) whose worker runs it
# A trial's system attr: its own number, set when an interrupt fails it (a re-queued copy inherits
# the attrs, with the original's number, so only the failed original matches itself).
INTERRUPTED = "dmlbench:interrupted"


class _Retry:
    """Optuna's retry callback (re-queue a failed trial with the same parameters), except that an
    interrupt never uses up a retry: only a worker that died (``MAX_RETRY`` times) ends a trial
    as FAIL, so Ctrl-C, however often, never costs a method one of its trials."""

    def __init__(self, interrupted: bool = False):
        self.interrupted = interrupted

    def __call__(self, study, trial) -> None:
        from optuna import storages

        cls = getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback
        retries = len(trial.system_attrs.get("retry_history", []))
        crashes = retries - int(trial.system_attrs.get(INTERRUPTS, 0))  # an interrupt counted itself already
        if self.interrupted or crashes < MAX_RETRY:
            cls(max_retry=None)(study, trial)


def _retry_callback():
    return _Retry()


def requeue_interrupted(study, trial_id: int) -> bool:
    """Fail a RUNNING trial as interrupted and re-queue it (same parameters, no retry used up);
    False if it had finished meanwhile."""
    optuna = import_optuna()
    storage = study._storage
    try:
        frozen = storage.get_trial(trial_id)
        storage.set_trial_system_attr(trial_id, INTERRUPTS, int(frozen.system_attrs.get(INTERRUPTS, 0)) + 1)
        storage.set_trial_user_attr(trial_id, "fail_reason", "interrupted")
        storage.set_trial_system_attr(trial_id, INTERRUPTED, frozen.number)
        if not storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    _Retry(interrupted=True)(study, storage.get_trial(trial_id))
    return True


def requeue_orphans(study, run_id: str | None = None, min_age_s: float = 0.0) -> int:
    """Re-queue interrupted trials left without their copy: failed as interrupted, but the process
    re-queuing them died before adding the copy (a pool terminates the other workers as soon as
    one exits). ``run_id``: only this tune's trials (its driver, once its workers are gone);
    ``min_age_s``: only trials failed that long ago (a tune's start, for any tune's orphans, never
    one another process is still re-queuing). Two processes sweeping the same orphan at once would
    both copy it, so only a driver sweeps, when none of its workers runs. Returns how many."""
    optuna = import_optuna()
    storage = study._storage
    trials = study.get_trials(deepcopy=False)
    copied = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    now = time.time()
    done = 0
    for t in trials:
        if (t.state != optuna.trial.TrialState.FAIL or t.number in copied
                or t.system_attrs.get(INTERRUPTED) != t.number
                or (run_id is not None and t.system_attrs.get(RUN_TAG) != run_id)
                or (min_age_s and (t.datetime_complete is None
                                   or now - t.datetime_complete.timestamp() < min_age_s))):
            continue
        _Retry(interrupted=True)(study, storage.get_trial(t._trial_id))
        done += 1
    return done


def _env_seconds(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
        if value < 1:
            raise ValueError
    except ValueError:
        raise DMLBenchError(f"${name}={raw!r} must be a whole number of seconds >= 1") from None
    return value


def heartbeat_settings() -> tuple[int, int]:
    """(heartbeat interval, grace period) in seconds, from the environment; 60 and 120 by default."""
    return _env_seconds(HEARTBEAT_ENV, 60), _env_seconds(GRACE_ENV, 120)


def default_storage(suite_dir: Path) -> str:
    """The SQLite URL of the suite folder's study.db (absolute path)."""
    return f"sqlite:///{(Path(suite_dir) / layout.STUDY).resolve()}"


def redact(url: str) -> str:
    """The storage URL without its password (for tuned.json and messages)."""
    if url.startswith("journal:") or "@" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is reported by the storage itself
        return url.split("://")[0] + "://***"


def storage_file(url: str) -> Path | None:
    """The file a file-based storage keeps its study in (SQLite, ``journal:PATH``); None for a
    database server or an in-memory SQLite."""
    if url.startswith("journal:"):
        return Path(url[len("journal:"):]).expanduser()
    if url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        return Path(url[len("sqlite:///"):].split("?")[0])
    return None


def creation_lock(url: str) -> Lock | None:
    """The lock under which a file-based study is created (None for a server: a server
    serialises its own writes, and a lost schema race is retried, see :func:`open_storage`).
    Its file is not the journal's ``PATH.lock``, which Optuna's journal backend takes for every
    write."""
    f = storage_file(url)
    return None if f is None else Lock(f.with_name(f".{f.name}.dmlbench-lock"))


CREATION_LOCK_TIMEOUT_S = 300  # creating a study takes a second; a holder this slow is stuck
SQLITE_TIMEOUT_S = 60  # how long a SQLite write waits for another process's before "database is locked"
SCHEMA_TRIES = 5
TUNE_FIX = "free space there and re-run the same command: finished trials are kept"
_DB_MODULES = ("sqlalchemy", "sqlite3", "psycopg", "psycopg2", "alembic")


def _chain(e: BaseException) -> list[BaseException]:
    """``e`` and the exceptions it was raised from or during, outermost first."""
    out: list[BaseException] = []
    while e is not None and e not in out:
        out.append(e)
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return out


def _is_storage_exception(x: BaseException, journal: Path | None) -> bool:
    if type(x).__module__.split(".")[0] in _DB_MODULES:
        return True
    if type(x).__name__ == "StorageInternalError":  # optuna's wrapper of a failed commit
        return True
    # A journal is a plain file: its failures are OSErrors naming it (or its lock), and a damaged
    # one fails to decode.
    if journal is None:
        return False
    return type(x).__name__ == "JSONDecodeError" or (
        isinstance(x, OSError) and bool(x.filename) and str(x.filename).startswith(str(journal)))


def storage_problem(e: BaseException, url: str, opening: bool = False) -> DMLBenchError | None:
    """The one-line error for an exception a study storage raised, naming its real cause (a full
    disk, a lock held too long, a read-only file or folder, a damaged file, an unreachable server);
    None if ``e`` is no storage error. ``opening``: raised while opening it (any error then is the
    storage's)."""
    chain = _chain(e)
    file = storage_file(url)
    where = str(file) if file is not None else redact(url)
    for x in chain:
        if is_disk_full(x):
            return DiskFullError.of(x, x.filename or where, TUNE_FIX)
    journal = file if url.startswith("journal:") else None
    if not opening and not any(_is_storage_exception(x, journal) for x in chain):
        return None
    db = [x for x in chain if type(x).__module__.split(".")[0] in _DB_MODULES]
    root = db[-1] if db else chain[-1]
    first = (str(root).strip().splitlines() or [type(root).__name__])[0][:200]
    said = f"{type(root).__name__}: {first}"
    text = " ".join(str(x) for x in chain).lower()
    head = "cannot open the study storage" if opening else "study storage"
    if "database or disk is full" in text:
        return DiskFullError(where, fix=TUNE_FIX)
    if "database is locked" in text or "database table is locked" in text:
        return DMLBenchError(f"study storage {where}: another process kept it locked for over {SQLITE_TIMEOUT_S} s "
                             "(database is locked); fewer processes writing one SQLite file at once (--workers), or "
                             "a PostgreSQL --storage for many, avoid it: re-run the same command, finished trials "
                             "are kept")
    readonly = "readonly database" in text or any(
        isinstance(x, OSError) and x.errno in (errno.EROFS, errno.EACCES, errno.EPERM) for x in chain)
    if readonly:
        return DMLBenchError(f"study storage {where} cannot be written ({said}): make the file and its folder "
                             "writable by this user or give another --out/--storage; if another process moved or "
                             "deleted the file while this one had it open, re-run the same command")
    if "unable to open database file" in text:
        return DMLBenchError(f"cannot open the study storage {where} ({said}): its folder must exist and be "
                             "writable; give another --out or --storage")
    if file is not None and ("not a database" in text or "malformed" in text
                             or any(type(x).__name__ == "JSONDecodeError" for x in chain)):
        return DMLBenchError(f"study storage {where} is damaged ({said}); move it aside and re-run: trials whose "
                             "runs are complete under trials/ are not trained again")
    if "disk i/o error" in text:
        return DMLBenchError(f"study storage {where}: {said}; check the disk, and on a network file system use "
                             "--storage journal:PATH or a PostgreSQL server (SQLite needs working file locks)")
    if file is None:
        return DMLBenchError(f"{head} {where}: {said}; check the URL, the driver (pip install "
                             "'dmlbench[tune-postgres]' for PostgreSQL) and the server")
    return DMLBenchError(f"{head} {where}: {said}; re-run the same command (finished trials are kept)")


@contextmanager
def storage_errors(url: str, opening: bool = False):
    """Run the block; an exception a study storage raised in it (SQLAlchemy, sqlite3, Optuna's
    StorageInternalError, a journal's OSError) becomes the one-line error of
    :func:`storage_problem`, chained to it (``bench -v`` logs the traceback). Anything else passes."""
    try:
        yield
    except DMLBenchError:
        raise
    except Exception as e:  # noqa: BLE001 - storage_problem tells a storage's error from any other
        problem = storage_problem(e, url, opening)
        if problem is None:
            raise
        raise problem from e


def _lost_schema_race(e: BaseException) -> bool:
    """Processes that open a new database at once all create Optuna's tables and version rows;
    the losers see a duplicate key, a table that already exists, or (between another's two
    writes) no version row yet. Opening again then finds the schema made."""
    for x in _chain(e):
        text = str(x).lower()
        if (type(x).__name__ in ("IntegrityError", "UniqueViolation", "DuplicateTable", "AssertionError")
                or "duplicate" in text or "already exists" in text or "unique constraint" in text):
            return True
    return False


def open_storage(url: str):
    """An Optuna storage: RDB (heartbeat + retry of stale trials) or ``journal:PATH``. A new
    file-based study is created under :func:`creation_lock` by the tune (:mod:`.study`); a lost
    race to create a server's schema is retried here."""
    optuna = import_optuna()
    heartbeat, grace = heartbeat_settings()
    with storage_errors(url, opening=True):
        if url.startswith("journal:"):
            from optuna.storages import JournalStorage

            path = storage_file(url)
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                from optuna.storages.journal import JournalFileBackend
            except ImportError:  # optuna < 4
                from optuna.storages import JournalFileStorage as JournalFileBackend
            return JournalStorage(JournalFileBackend(str(path)))
        kw = {"engine_kwargs": {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}} if url.startswith("sqlite") else {}
        if storage_file(url) is not None:
            storage_file(url).parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(SCHEMA_TRIES):
            try:
                return _rdb_storage(optuna, url, heartbeat, grace, kw)
            except Exception as e:  # noqa: BLE001 - only a lost schema race is retried
                if attempt + 1 == SCHEMA_TRIES or not _lost_schema_race(e):
                    raise
                time.sleep(0.2 + 0.3 * attempt)


def _rdb_storage(optuna, url: str, heartbeat: int, grace: int, kw: dict):
    try:
        return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat, grace_period=grace,
                                          heartbeat_stale_trial_callback=_retry_callback(), **kw)
    except TypeError:  # optuna < 4.9 names the callback failed_trial_callback
        return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat, grace_period=grace,
                                          failed_trial_callback=_retry_callback(), **kw)


def _is_journal(storage) -> bool:
    return type(storage).__name__ == "JournalStorage"


class Heartbeat:
    """Tells the storage every few seconds that a trial's worker is alive. RDB storages keep it in
    their heartbeat table; a journal file in a trial system attribute (Optuna keeps none there)."""

    def __init__(self, storage, trial_id: int):
        self.storage, self.trial_id = storage, trial_id
        self.interval = heartbeat_settings()[0]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while True:
            try:
                if _is_journal(self.storage):
                    self.storage.set_trial_system_attr(self.trial_id, "dmlbench:heartbeat", time.time())
                else:
                    self.storage.record_heartbeat(self.trial_id)
            except Exception as e:  # noqa: BLE001 - a missed beat is retried at the next interval
                log.debug("heartbeat of trial %d failed: %s", self.trial_id, e)
            if self.stop.wait(self.interval):
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def fail_stale_trials(study) -> None:
    """Fail RUNNING trials whose worker stopped beating, and re-queue them (same parameters)."""
    optuna = import_optuna()
    storage = study._storage
    if not _is_journal(storage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optuna.storages.fail_stale_trials(study)
        return
    grace = heartbeat_settings()[1]
    now = time.time()
    retry = _retry_callback()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        beat = t.system_attrs.get("dmlbench:heartbeat")
        if beat is None and t.datetime_start is not None:
            beat = t.datetime_start.timestamp()
        if beat is not None and now - beat > grace:
            try:
                if storage.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.FAIL):
                    retry(study, storage.get_trial(t._trial_id))
            except optuna.exceptions.UpdateFinishedTrialError:
                pass


def budget(study) -> tuple[list, list, list]:
    """(finished trials that count, running, waiting). A trial that was failed because its worker
    died and then re-queued does not count: its re-queued copy does."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = set()
    for t in trials:
        retried.update(t.system_attrs.get("retry_history", []))
    finished = [t for t in trials if t.state.is_finished() and t.number not in retried]
    running = [t for t in trials if t.state == TrialState.RUNNING]
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    return finished, running, waiting
