"""What made a result: code version, device, library versions, thread count.

``code_hash`` is a content hash of the installed package's own source files (every ``.py`` and
``.toml`` of ``dmlbench``), so it names the code that ran whether or not there is a git checkout,
and a commit that changes only the README or the committed results leaves it unchanged. The git
commit and dirty flag are recorded beside it where there is a checkout.

A result on disk is *stale* when its :func:`reuse_key` differs from the current one: other code,
another device type or GPU model, or other versions of the libraries that compute the numbers.
"""

from __future__ import annotations

import functools
import hashlib
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import dmlbench.data
import dmlbench.methods
from dmlbench.core import VERSION

# The libraries whose versions can change a result's numbers.
NUMERIC_LIBS = ("torch", "numpy", "pytorch-metric-learning", "faiss-cpu", "scikit-learn", "timm")


def package_dirs() -> list[Path]:
    """The folders of dmlbench's installed packages (``dmlbench``, its data sets and its methods), sorted."""
    package = Path(__file__).resolve().parents[1]  # bench/ (dmlbench), above running/
    return sorted({package, *(Path(m.__file__).resolve().parent for m in (dmlbench.data, dmlbench.methods))})


@functools.cache
def code_hash() -> str:
    """16 hex digits of a SHA-256 over the path and bytes of every ``.py`` and ``.toml`` of the packages."""
    h = hashlib.sha256()
    for folder in package_dirs():
        for f in sorted(folder.rglob("*")):
            if f.suffix in (".py", ".toml") and "__pycache__" not in f.parts:
                h.update(f.relative_to(folder.parent).as_posix().encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


@functools.cache
def git_state() -> dict:
    """The checkout's commit and whether the packages' source differs from it; both None without git."""
    root = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {"git_commit": None, "git_dirty": None}
    # Dirty means: the package's own source differs from the commit (results and docs don't count).
    status = git("status", "--porcelain", "--", *[str(p) for p in package_dirs()])
    return {"git_commit": commit, "git_dirty": bool(status)}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def library_versions() -> dict:
    """Versions of the installed numeric libraries, of dmlbench and of Python. torch's is
    ``torch.__version__``, with its build tag (``2.14.1+cu130``, ``2.13.0+cpu``: the package
    metadata may drop it), and the CUDA and cuDNN versions the build carries, where it has them."""
    import torch  # a run has imported it already; its version string is the build's own

    out = {name: _version(name) for name in NUMERIC_LIBS}
    out["torch"] = torch.__version__
    out["torch_cuda"] = torch.version.cuda  # None for a CPU build
    out["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    out = {k: v for k, v in out.items() if v is not None}
    out["dmlbench"] = VERSION
    out["python"] = platform.python_version()
    return out


def device_info(device: str) -> dict:
    """The device a run used: type, GPU model and CUDA/cuDNN versions where there is one."""
    import torch

    info = {"device": device, "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}
    if device.startswith("cuda") and torch.cuda.is_available():
        d = torch.device(device)
        info.update(gpu=torch.cuda.get_device_name(d), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


def provenance(device: str, threads: int) -> dict:
    """What made a run: code hash, git state, library versions, device and thread count."""
    return {"code_hash": code_hash(), **git_state(), "versions": library_versions(),
            "device": device_info(device), "threads": threads}


def device_kind(info: dict) -> str:
    """'cpu', or 'cuda:<GPU model>': what a result's bits depend on, not which card index."""
    if str(info.get("device", "cpu")).startswith("cuda"):
        return f"cuda:{info.get('gpu', '?')}"
    return "cpu"


def reuse_key(prov: dict) -> dict:
    """The parts of a provenance that must match for a stored result to be reused."""
    return {"code_hash": prov.get("code_hash"), "device": device_kind(prov.get("device") or {}),
            "versions": {k: v for k, v in (prov.get("versions") or {}).items() if k in NUMERIC_LIBS},
            "data": prov.get("data"), "test_triplets": prov.get("test_triplets")}


def differences(old: dict, new: dict) -> list[str]:
    """Human-readable differences between two reuse keys, e.g. ['code 1a2b3c4d -> 5e6f7a8b']."""
    a, b = reuse_key(old), reuse_key(new)
    out = []
    if a["code_hash"] != b["code_hash"]:
        out.append(f"code {str(a['code_hash'])[:8]} -> {str(b['code_hash'])[:8]}")
    if a["device"] != b["device"]:
        out.append(f"device {a['device']} -> {b['device']}")
    if a["data"] != b["data"]:  # the data's fingerprint (Data.fingerprint): files changed, added or removed
        out.append(f"data {a['data'] or 'unrecorded'} -> {b['data']}")
    if a["test_triplets"] != b["test_triplets"]:  # the suite's stored test triplets were replaced
        out.append(f"test triplets {a['test_triplets'] or 'unrecorded'} -> {b['test_triplets']}")
    for lib in sorted(set(a["versions"]) | set(b["versions"])):
        if a["versions"].get(lib) != b["versions"].get(lib):
            out.append(f"{lib} {a['versions'].get(lib)} -> {b['versions'].get(lib)}")
    return out
