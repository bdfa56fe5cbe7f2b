"""Data the lab's services must hold once they run: the portal database, its roles, the
S3 bucket. Each step checks first and changes only what is missing or wrong."""

from __future__ import annotations

import time

from ..errors import ResilienceError
from . import layout as L
from . import seed
from . import topology as T
from .keys import read_secret
from .services import pg_connect, pg_setpriv
from .system import HOST_ENV, run


def _psql_local(sql: str) -> None:
    """Run SQL as the postgres OS user over db1's unix socket (peer auth): the way in when
    the superuser's TCP password does not match its secret file."""
    run([*pg_setpriv(), f"{T.PG_BIN}/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1",
         "-h", str(L.pg_socket_dir()), "-U", T.DB_SUPERUSER, "-d", "postgres", "-f", "-"],
        input=sql, env=HOST_ENV, what="psql on db1")


def _can_login(user: str, password: str, dbname: str = "postgres") -> bool:
    try:
        with pg_connect(user, dbname, password, timeout=3):
            return True
    except Exception:  # noqa: BLE001 - wrong password, missing role, missing db: all "no"
        return False


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def ensure_database() -> list[str]:
    """Superuser password, database ``portal`` with its seeded rows, and the backup role
    (login, pg_read_all_data). Returns what it changed (empty on a ready database)."""
    changed = []
    su_pw = read_secret("db_superuser_password")
    if not _can_login(T.DB_SUPERUSER, su_pw):
        _psql_local(f"ALTER ROLE {T.DB_SUPERUSER} PASSWORD {_literal(su_pw)};\n")
        changed.append("set superuser password")
    try:
        with pg_connect(password=su_pw) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                  (T.DB_NAME,)).fetchone()
            if not exists:
                conn.execute(f"CREATE DATABASE {T.DB_NAME}")
                changed.append(f"created database {T.DB_NAME}")
        with pg_connect(dbname=T.DB_NAME, password=su_pw) as conn:
            if not seed.is_seeded(conn):
                # Only a seed that never completed can be here (it runs in one transaction).
                conn.execute("DROP TABLE IF EXISTS comments, attachments, articles, users, "
                             "categories CASCADE")
                n = seed.seed(conn)
                changed.append(f"seeded {n} rows")
        backup_pw = read_secret("db_backup_password")
        if not _can_login(T.DB_BACKUP_ROLE, backup_pw, T.DB_NAME):
            with pg_connect(password=su_pw) as conn:
                role = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                                    (T.DB_BACKUP_ROLE,)).fetchone()
                verb = "ALTER" if role else "CREATE"
                conn.execute(f"{verb} ROLE {T.DB_BACKUP_ROLE} LOGIN PASSWORD "
                             f"{_literal(backup_pw)}")
                conn.execute(f"GRANT pg_read_all_data TO {T.DB_BACKUP_ROLE}")
            changed.append(f"set role {T.DB_BACKUP_ROLE}")
    except ResilienceError:
        raise
    except Exception as exc:  # noqa: BLE001 - one line, not a psycopg traceback
        raise ResilienceError(f"database setup on db1 failed: {str(exc).splitlines()[0]}") from None
    return changed


def s3_client(access_key: str | None = None, secret_key: str | None = None):
    """A boto3 S3 client for the lab endpoint (lab credentials unless given)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=T.S3_ENDPOINT, region_name=T.S3_REGION,
        aws_access_key_id=access_key or T.S3_ACCESS_KEY_ID,
        aws_secret_access_key=secret_key or read_secret("s3_secret_key"),
        config=Config(retries={"max_attempts": 2}, connect_timeout=3, read_timeout=10,
                      s3={"addressing_style": "path"}),
    )


def _probe_write(client, timeout: float = 30.0) -> None:
    """Write, read back and delete a probe object: S3 answering is not yet S3 storing (the
    volume server registers with the master a few seconds after the gateway is up)."""
    key, body = "lab-probe/ready", b"ready"
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.put_object(Bucket=T.S3_BUCKET, Key=key, Body=body)
            ok = client.get_object(Bucket=T.S3_BUCKET, Key=key)["Body"].read() == body
            client.delete_object(Bucket=T.S3_BUCKET, Key=key)
            if ok:
                return
        except Exception:  # noqa: BLE001 - retried until the deadline
            if time.monotonic() >= deadline:
                raise
        if time.monotonic() >= deadline:
            raise ResilienceError("S3 on s3 does not store objects")
        time.sleep(0.3)


def ensure_bucket() -> list[str]:
    """The repository bucket exists (created with the lab credentials if missing)."""
    try:
        client = s3_client()
        names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        changed = []
        if T.S3_BUCKET not in names:
            client.create_bucket(Bucket=T.S3_BUCKET)
            changed.append(f"created bucket {T.S3_BUCKET}")
        _probe_write(client)
        return changed
    except Exception as exc:  # noqa: BLE001 - one line, not a botocore traceback
        raise ResilienceError(f"S3 setup on s3 failed: {str(exc).splitlines()[0]}") from None
