"""s3: SeaweedFS with the lab identity; anything else is refused."""

from __future__ import annotations

import os
import uuid

import pytest
from botocore.exceptions import ClientError

from resilience.lab import topology as T
from resilience.lab.provision import s3_client
from resilience.lab.services import http_get

pytestmark = pytest.mark.lab


def test_put_and_get_with_lab_credentials(lab):
    client = s3_client()
    key = f"tests/{uuid.uuid4().hex}.bin"
    data = os.urandom(256 * 1024)
    client.put_object(Bucket=T.S3_BUCKET, Key=key, Body=data)
    try:
        assert client.get_object(Bucket=T.S3_BUCKET, Key=key)["Body"].read() == data
        listed = client.list_objects_v2(Bucket=T.S3_BUCKET, Prefix="tests/")
        assert key in {o["Key"] for o in listed.get("Contents", [])}
    finally:
        client.delete_object(Bucket=T.S3_BUCKET, Key=key)


@pytest.mark.parametrize("access,secret", [
    (T.S3_ACCESS_KEY_ID, "wrong-secret-key-0000000000000000000000"),
    ("someone-else", "wrong-secret-key-0000000000000000000000"),
])
def test_wrong_credentials_are_refused(lab, access, secret):
    client = s3_client(access, secret)
    with pytest.raises(ClientError) as exc:
        client.list_buckets()
    assert exc.value.response["Error"]["Code"] in (
        "SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied")
    with pytest.raises(ClientError):
        client.put_object(Bucket=T.S3_BUCKET, Key="tests/intruder", Body=b"x")


def test_anonymous_requests_are_refused(lab):
    status, _h, _b = http_get(T.S3_ADDR, f"/{T.S3_BUCKET}/", port=T.S3_PORT)
    assert status == 403
