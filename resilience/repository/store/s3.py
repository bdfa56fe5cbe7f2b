"""A repository in an S3-compatible bucket (AWS, MinIO, SeaweedFS, Ceph…), through boto3.

Every request is retried on transient faults (connection errors, timeouts, 5xx, throttling)
with exponential backoff and full jitter, bounded in attempts and time (tenacity); botocore's
own retries are off so that one policy governs. What still fails becomes TemporaryError
(exit 75). Refused credentials or a missing bucket are configuration problems (exit 2).

Tunables for tests and slow links (environment): ``RESILIENCE_S3_ATTEMPTS`` (default 8),
``RESILIENCE_S3_DEADLINE`` seconds (default 120), ``RESILIENCE_S3_TIMEOUT`` read timeout
seconds (default 60).
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from ...errors import ResilienceError, TemporaryError, UsageError
from .base import NotFound, Store

T = TypeVar("T")
_TRANSIENT_CODES = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling",
                    "ThrottlingException", "RequestTimeTooSkewed", "OperationAborted", "503", "500", "502", "504"}
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken",
                     "ExpiredToken", "AuthorizationHeaderMalformed", "403"}


def _code(exc: BaseException) -> tuple[str, int]:
    resp = getattr(exc, "response", None) or {}
    err = resp.get("Error", {})
    status = int(resp.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return str(err.get("Code", status or "")), status


def is_transient(exc: BaseException) -> bool:
    """True for faults worth retrying: network errors, timeouts, 5xx, throttling."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        code, status = _code(exc)
        return code in _TRANSIENT_CODES or status >= 500 or status == 429
    if isinstance(exc, BotoCoreError):
        # Connection, timeout, incomplete read, checksum mismatch: all worth another try.
        from botocore.exceptions import NoCredentialsError, ParamValidationError

        return not isinstance(exc, (NoCredentialsError, ParamValidationError))
    return isinstance(exc, (ConnectionError, TimeoutError, _ShortRead))


class _ShortRead(Exception):
    """A body shorter than its Content-Length: the connection broke mid-transfer."""


class S3Store(Store):
    concurrency = 4

    def __init__(self, url: str, *, endpoint: str | None = None, region: str | None = None,
                 access_key_id: str | None = None, secret_access_key: str | None = None):
        parts = urlsplit(url)
        self.url = url
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        self.endpoint = endpoint
        self._opts: dict[str, Any] = {
            "endpoint_url": endpoint,
            "region_name": region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        }
        if access_key_id and secret_access_key:
            self._opts.update(aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key)
        self.attempts = int(os.environ.get("RESILIENCE_S3_ATTEMPTS", "8"))
        self.deadline = float(os.environ.get("RESILIENCE_S3_DEADLINE", "120"))
        self.timeout = float(os.environ.get("RESILIENCE_S3_TIMEOUT", "60"))
        self._local = threading.local()
        self.retries = 0

    def spec(self) -> tuple:
        return ("s3", {"url": self.url, "endpoint": self.endpoint, "region": self._opts["region_name"],
                       "access_key_id": self._opts.get("aws_access_key_id"),
                       "secret_access_key": self._opts.get("aws_secret_access_key")})

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            import boto3
            from botocore.config import Config

            cfg = Config(
                retries={"total_max_attempts": 1, "mode": "standard"},
                connect_timeout=min(10.0, self.timeout),
                read_timeout=self.timeout,
                max_pool_connections=16,
                s3={"addressing_style": "path"},
                # Trailing checksums (aws-chunked) are not understood by every S3 look-alike;
                # integrity is ensured by Content-MD5 and by the repository's own hashes.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            )
            session = boto3.session.Session()
            client = session.client("s3", config=cfg, **self._opts)
            self._local.client = client
        return client

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        from botocore.exceptions import ClientError, NoCredentialsError

        def count(_state) -> None:
            self.retries += 1

        try:
            for attempt in Retrying(
                retry=retry_if_exception(is_transient),
                wait=wait_random_exponential(multiplier=0.1, max=5),
                stop=stop_after_attempt(self.attempts) | stop_after_delay(self.deadline),
                before_sleep=count,
                reraise=False,
            ):
                with attempt:
                    return fn()
        except RetryError as exc:
            last = exc.last_attempt.exception()
            raise TemporaryError(
                f"S3 {self.endpoint or 'endpoint'}: {what} failed after {exc.last_attempt.attempt_number} "
                f"attempt(s): {_describe(last)}"
            ) from None
        except NoCredentialsError:
            raise UsageError("S3: no credentials (set repository.access_key_id and "
                             "secret_access_key_file, or the AWS environment)") from None
        except ClientError as exc:
            code, status = _code(exc)
            if code in ("NoSuchKey", "404", "NotFound"):
                raise NotFound(what) from None
            if code == "NoSuchBucket":
                raise UsageError(f"S3 bucket {self.bucket!r} does not exist (run 'resilience init')") from None
            if code in _CREDENTIAL_CODES or status == 403:
                raise UsageError(f"S3 refused the credentials ({code}) for bucket {self.bucket!r}") from None
            raise ResilienceError(f"S3: {what}: {code or status}") from None
        raise AssertionError("unreachable")

    # -- Store API --------------------------------------------------------------------------

    def create(self) -> None:
        from botocore.exceptions import ClientError

        def make() -> None:
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                code, status = _code(exc)
                if code in ("404", "NoSuchBucket", "NotFound") or status == 404:
                    self.client.create_bucket(Bucket=self.bucket)
                else:
                    raise

        self._call(f"create bucket {self.bucket}", make)

    def get(self, name: str) -> bytes:
        def fetch() -> bytes:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(name))
            body = resp["Body"].read()
            if len(body) != resp.get("ContentLength", len(body)):
                raise _ShortRead(f"got {len(body)} of {resp['ContentLength']} bytes")
            return body

        return self._call(f"get {name}", fetch)

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        rng = f"bytes=-{-offset}" if offset < 0 else f"bytes={offset}-{offset + length - 1}"

        def fetch() -> bytes:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(name), Range=rng)
            body = resp["Body"].read()
            if len(body) != resp.get("ContentLength", len(body)):
                raise _ShortRead(f"got {len(body)} of {resp['ContentLength']} bytes")
            return body[:length] if offset < 0 else body

        return self._call(f"get {name}", fetch)

    def put(self, name: str, data: bytes | memoryview) -> None:
        payload = bytes(data)
        md5 = base64.b64encode(hashlib.md5(payload, usedforsecurity=False).digest()).decode()
        self._call(f"put {name}", lambda: self.client.put_object(
            Bucket=self.bucket, Key=self._key(name), Body=payload, ContentMD5=md5))

    def exists(self, name: str) -> bool:
        try:
            self.size(name)
            return True
        except NotFound:
            return False

    def size(self, name: str) -> int:
        resp = self._call(f"stat {name}", lambda: self.client.head_object(Bucket=self.bucket, Key=self._key(name)))
        return int(resp["ContentLength"])

    def delete(self, name: str) -> None:
        self._call(f"delete {name}", lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(name)))

    def list(self, folder: str) -> Iterator[tuple[str, int]]:
        prefix = self._key(folder).rstrip("/") + "/" if folder or self.prefix else ""
        if not folder and not self.prefix:
            prefix = ""
        strip = len(self._key("")) if self.prefix else 0
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": 1000}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call(f"list {folder or '/'}", lambda kw=kwargs: self.client.list_objects_v2(**kw))
            for obj in page.get("Contents", []):
                yield obj["Key"][strip:], int(obj["Size"])
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    code, status = _code(exc)
    if code and not code.isdigit():
        return f"{code} (HTTP {status})" if status else code
    if status:
        return f"HTTP {status}"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
