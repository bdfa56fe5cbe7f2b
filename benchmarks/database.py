#!/usr/bin/env python3
"""Benchmark database backup and restore against plain pg_dump / pg_restore, in one run.

    sudo .venv/bin/python benchmarks/database.py [--scale 70] [--work /var/tmp] [--json-out F]

Needs the lab (db1). Creates a pgbench database (``pgbench -i -s SCALE``, server-side data
generation; scale 70 ≈ 1 GB with indexes) on db1, then measures on the ops host:

- plain ``pg_dump -Fc`` to a file (its default zstd-less gzip compression) and to /dev/null
  with ``-Z0``; plain ``pg_restore`` of that file into a new database (single job and -j 2);
- resilience: ``dump_source`` + the engine into a local repository (exported snapshot, exact
  counts, pg_dump -Fc -Z0, dedup, zstd, AES-GCM), a second backup of the unchanged database,
  and ``restore_database`` to scratch (pg_restore piped from the repository, then every
  table counted and compared), piped and with a temporary file + ``pg_restore -j 2``.

Prints seconds, sizes and ratios to the plain tools, and removes everything it created.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from resilience.config import DatabaseConfig  # noqa: E402
from resilience.lab import layout as L  # noqa: E402
from resilience.lab import topology as T  # noqa: E402
from resilience.lab.keys import read_secret  # noqa: E402
from resilience.repository.backup import Backup  # noqa: E402
from resilience.repository.repo import Repository  # noqa: E402
from resilience.repository.store import LocalStore  # noqa: E402
from resilience.sources.postgres import dump_source  # noqa: E402
from resilience.targets.postgres import restore_database  # noqa: E402

DB = "rsl_bench_pgbench"
PLAIN_RESTORE = "rsl_bench_plain_restore"


def su_conn(dbname: str = "postgres"):
    import psycopg

    return psycopg.connect(host=T.DB1_ADDR, port=T.DB_PORT, user=T.DB_SUPERUSER,
                           password=read_secret("db_superuser_password"), dbname=dbname,
                           autocommit=True, connect_timeout=5)


def sql(statement: str, dbname: str = "postgres"):
    with su_conn(dbname) as conn:
        cur = conn.execute(statement)
        return cur.fetchall() if cur.description else None


def run(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          check=False)
    if proc.returncode != 0:
        sys.exit(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    return time.perf_counter() - t0


def conn_args(dbname: str) -> list[str]:
    return ["-h", T.DB1_ADDR, "-p", str(T.DB_PORT), "-U", T.DB_SUPERUSER, "-d", dbname, "-w"]


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=70)
    ap.add_argument("--work", default="/var/tmp", help="folder for the dump file and the repo")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (the lab)")
    env = dict(os.environ, PGPASSFILE=str(L.pgpass_file()))
    pg = T.PG_BIN
    work = Path(tempfile.mkdtemp(prefix="resilience-dbbench-", dir=args.work))
    db = DatabaseConfig(host="db1", name=DB, password_file=L.secret_path("db_backup_password"),
                        superuser_password_file=L.secret_path("db_superuser_password"))
    res: dict[str, float] = {}
    sizes: dict[str, int] = {}
    try:
        for name in (DB, PLAIN_RESTORE):
            sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        sql(f"CREATE DATABASE {DB}")
        print(f"pgbench -i -s {args.scale} …", flush=True)
        res["pgbench_init"] = run([f"{pg}/pgbench", "-i", "-s", str(args.scale), "-q",
                                   "--init-steps=dtGvp", "-h", T.DB1_ADDR, "-p", str(T.DB_PORT),
                                   "-U", T.DB_SUPERUSER, DB], env)
        sizes["database"] = sql(f"SELECT pg_database_size('{DB}')")[0][0]
        sql("CHECKPOINT")

        dump_file = work / "plain.dump"
        print("plain pg_dump / pg_restore …", flush=True)
        res["plain_dump_file"] = run([f"{pg}/pg_dump", "-Fc", "-f", str(dump_file),
                                      *conn_args(DB)], env)
        sizes["plain_dump_file"] = dump_file.stat().st_size
        res["plain_dump_Z0_devnull"] = run([f"{pg}/pg_dump", "-Fc", "-Z0", "--no-sync",
                                            "-f", "/dev/null", *conn_args(DB)], env)
        for jobs in (1, 2):
            sql(f"DROP DATABASE IF EXISTS {PLAIN_RESTORE}")
            sql(f"CREATE DATABASE {PLAIN_RESTORE}")
            res[f"plain_restore_j{jobs}"] = run([f"{pg}/pg_restore", "--exit-on-error",
                                                 f"--jobs={jobs}", *conn_args(PLAIN_RESTORE),
                                                 str(dump_file)], env)
        sql(f"DROP DATABASE IF EXISTS {PLAIN_RESTORE}")
        dump_file.unlink()

        print("resilience backup / restore …", flush=True)
        repo = Repository.init(LocalStore(work / "repo"), b"bench-password")
        snaps = []
        for label in ("backup", "backup_unchanged"):
            t0 = time.perf_counter()
            with dump_source("bench", db, T.DB1_ADDR) as dump:
                snap, stats = Backup(repo, dump.source, site="bench", kind="database",
                                     meta=dump.meta).run()
            res[f"resilience_{label}"] = time.perf_counter() - t0
            res[f"resilience_{label}_counting"] = snap.meta["counted_s"]
            sizes[f"resilience_{label}_read"] = stats.bytes_read
            sizes[f"resilience_{label}_stored"] = stats.bytes_stored
            snaps.append(snap)
        sizes["resilience_repository"] = du(work / "repo")
        for jobs in (1, 2):
            t0 = time.perf_counter()
            out = restore_database(repo, snaps[0], db, T.DB1_ADDR, target="scratch", jobs=jobs)
            res[f"resilience_restore_scratch_j{jobs}"] = time.perf_counter() - t0
            res[f"resilience_restore_scratch_j{jobs}_pg_restore"] = out["durations"]["pg_restore_s"]
            res[f"resilience_restore_scratch_j{jobs}_verify"] = out["durations"]["verify_s"]
        repo.close()
    finally:
        for name in (DB, PLAIN_RESTORE):
            with contextlib.suppress(Exception):
                sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        with contextlib.suppress(Exception):
            for (name,) in sql(f"SELECT datname FROM pg_database WHERE datname LIKE '{DB}__%'"):
                sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(work, ignore_errors=True)

    mib = 1 << 20
    print(f"\nscale {args.scale}: database {sizes['database'] / mib:.0f} MiB, plain -Fc dump "
          f"{sizes['plain_dump_file'] / mib:.0f} MiB, repository after two backups "
          f"{sizes['resilience_repository'] / mib:.0f} MiB "
          f"(second backup stored {sizes['resilience_backup_unchanged_stored'] / mib:.1f} MiB)")
    rows = [
        ("backup", "plain_dump_file", "resilience_backup"),
        ("backup (unchanged db)", "plain_dump_file", "resilience_backup_unchanged"),
        ("restore, 1 job", "plain_restore_j1", "resilience_restore_scratch_j1"),
        ("restore, -j 2", "plain_restore_j2", "resilience_restore_scratch_j2"),
    ]
    print(f"{'':24}{'plain s':>10}{'resilience s':>14}{'ratio':>8}")
    for label, plain, ours in rows:
        print(f"{label:24}{res[plain]:>10.1f}{res[ours]:>14.1f}{res[ours] / res[plain]:>8.2f}")
    print("details (s): " + ", ".join(f"{k} {v:.2f}" for k, v in res.items()))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"scale": args.scale, "seconds": res,
                                                   "bytes": sizes}, indent=2))


if __name__ == "__main__":
    main()
