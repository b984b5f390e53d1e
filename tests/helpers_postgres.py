"""A throwaway PostgreSQL server for the shared-study test: initdb into a temporary folder, a
Unix socket there and a free TCP port on loopback, stopped and deleted afterwards.

Skips (with the reason) where the server binaries or psycopg (SQLAlchemy's PostgreSQL driver) are
missing. initdb refuses to run
as root, so under root the cluster belongs to the ``postgres`` user (Debian's package makes it).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest


def _bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    hits = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return hits[-1] if hits else None


@contextmanager
def postgres_server():
    """Yield a SQLAlchemy URL of a fresh database on a server that lives for the block."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'dmlbench[tune-postgres]')")
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            import pwd

            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to own a cluster")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="dmlbench-pg-"))
    if as_user:
        os.chown(root, pw.pw_uid, pw.pw_gid)
    data = root / "data"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = False
    try:
        subprocess.run([*as_user, initdb, "-D", str(data), "-U", "bench", "--auth=trust", "-E", "UTF8"],
                       check=True, capture_output=True, timeout=120)
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(root / "log"), "-w", "-t", "60", "-o",
                        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=50", "start"],
                       check=True, capture_output=True, timeout=120)
        started = True
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=port, user="bench", dbname="postgres", autocommit=True) as con:
            con.execute("CREATE DATABASE study")
        yield f"postgresql://bench@127.0.0.1:{port}/study"
    finally:
        if started:
            subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True,
                           timeout=60)
        shutil.rmtree(root, ignore_errors=True)
