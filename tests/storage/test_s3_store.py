"""S3BlobStore against a real moto S3 server over HTTP."""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import httpx
import pytest

from storage.s3 import CACHE_CONTROL, S3BlobStore, StorageUnavailable
from tests.s3_server import DUMMY_KEY, MotoServer, moto_server, s3_bucket  # noqa: F401

SECRET = "sEcReT-do-not-leak-4242"


def make_store(server: MotoServer, bucket: str, **kwargs) -> S3BlobStore:
    kwargs.setdefault("prefix", "gw")
    return S3BlobStore(
        bucket=bucket,
        access_key_id=DUMMY_KEY,
        secret_access_key=kwargs.pop("secret_access_key", DUMMY_KEY),
        endpoint_url=server.endpoint_url,
        **kwargs,
    )


def test_round_trip_under_the_prefix(s3_bucket) -> None:  # noqa: F811
    server, bucket = s3_bucket
    store = make_store(server, bucket, prefix="/gw/")
    key = "images/ab/abcdef.png"

    assert store.exists(key) is False
    store.put(key, b"\x89PNG data")
    assert store.exists(key) is True
    assert store.get(key) == b"\x89PNG data"

    listed = server.client().list_objects_v2(Bucket=bucket)
    assert [o["Key"] for o in listed["Contents"]] == ["gw/images/ab/abcdef.png"]

    store.delete(key)
    assert store.exists(key) is False
    store.delete(key)  # deleting a missing object is fine
    with pytest.raises(ValueError):
        store.put("../escape.png", b"x")


def test_no_prefix(s3_bucket) -> None:  # noqa: F811
    server, bucket = s3_bucket
    store = make_store(server, bucket, prefix="")
    store.put("a.bin", b"1")
    assert server.client().get_object(Bucket=bucket, Key="a.bin")["Body"].read() == b"1"


@pytest.mark.parametrize(
    "key,content_type",
    [
        ("x/a.png", "image/png"),
        ("x/a.JPG", "image/jpeg"),
        ("x/a.jpeg", "image/jpeg"),
        ("x/a.webp", "image/webp"),
        ("x/a.gif", "image/gif"),
        ("x/a.mp4", "video/mp4"),
        ("x/a.dat", "application/octet-stream"),
    ],
)
def test_content_type_and_cache_control(s3_bucket, key: str, content_type: str) -> None:  # noqa: F811
    server, bucket = s3_bucket
    store = make_store(server, bucket)
    store.put(key, b"data")
    head = server.client().head_object(Bucket=bucket, Key=f"gw/{key}")
    assert head["ContentType"] == content_type
    assert head["CacheControl"] == CACHE_CONTROL == "public, max-age=31536000, immutable"


def test_put_file_and_get_to_file(s3_bucket, tmp_path: Path) -> None:  # noqa: F811
    server, bucket = s3_bucket
    store = make_store(server, bucket)
    payload = os.urandom(3 * 1024 * 1024 + 17)
    src = tmp_path / "src.mp4"
    src.write_bytes(payload)

    store.put_file("videos/v.mp4", src)
    head = server.client().head_object(Bucket=bucket, Key="gw/videos/v.mp4")
    assert head["ContentLength"] == len(payload)
    assert head["ContentType"] == "video/mp4"
    assert head["CacheControl"] == CACHE_CONTROL

    dst = tmp_path / "out" / "dst.mp4"
    store.get_to_file("videos/v.mp4", dst)
    assert dst.read_bytes() == payload
    assert [p.name for p in dst.parent.iterdir()] == ["dst.mp4"]  # no temp file left

    with pytest.raises(FileNotFoundError):
        store.get_to_file("videos/missing.mp4", tmp_path / "missing.mp4")
    assert not (tmp_path / "missing.mp4").exists()


def test_get_missing_raises_file_not_found(s3_bucket) -> None:  # noqa: F811
    server, bucket = s3_bucket
    store = make_store(server, bucket)
    with pytest.raises(FileNotFoundError):
        store.get("images/nope.png")


def test_presigned_url(s3_bucket) -> None:  # noqa: F811
    server, bucket = s3_bucket
    store = make_store(server, bucket)
    store.put("images/p.png", b"presigned bytes")

    url = store.presigned_url("images/p.png", 600)
    assert url.startswith(f"{server.endpoint_url}/{bucket}/gw/images/p.png?")
    assert "X-Amz-Expires=600" in url
    resp = httpx.get(url, trust_env=False)
    assert resp.status_code == 200
    assert resp.content == b"presigned bytes"

    assert store.presigned_url("images/p.png", 604800)
    for bad in (0, -5, 604801):
        with pytest.raises(ValueError):
            store.presigned_url("images/p.png", bad)


def test_public_url() -> None:
    kwargs = dict(bucket="b", access_key_id="id", secret_access_key=SECRET)
    store = S3BlobStore(**kwargs, prefix="gw", public_base_url="https://cdn.example.com/")
    assert store.public_url("images/a.png") == "https://cdn.example.com/gw/images/a.png"
    assert S3BlobStore(**kwargs).public_url("images/a.png") is None
    with pytest.raises(ValueError):
        store.public_url("/etc/passwd")


def test_r2_endpoint_from_account_id() -> None:
    store = S3BlobStore(
        bucket="imgs", access_key_id="id", secret_access_key=SECRET, r2_account_id="acc123"
    )
    assert store.client.meta.endpoint_url == "https://acc123.r2.cloudflarestorage.com"
    assert store.client.meta.region_name == "auto"
    assert store.client.meta.config.s3["addressing_style"] == "path"
    described = store.describe()
    assert described == {
        "bucket": "imgs",
        "endpoint": "https://acc123.r2.cloudflarestorage.com",
        "region": "auto",
        "prefix": "",
        "public_base_url": None,
    }
    assert SECRET not in repr(described) and SECRET not in repr(store)

    # An explicit endpoint wins; plain AWS defaults to us-east-1.
    custom = S3BlobStore(
        bucket="b",
        access_key_id="id",
        secret_access_key=SECRET,
        r2_account_id="acc123",
        endpoint_url="https://s3.example.test",
    )
    assert custom.client.meta.endpoint_url == "https://s3.example.test"
    aws = S3BlobStore(bucket="b", access_key_id="id", secret_access_key=SECRET)
    assert aws.client.meta.region_name == "us-east-1"


def test_client_config() -> None:
    store = S3BlobStore(
        bucket="b",
        access_key_id="id",
        secret_access_key=SECRET,
        endpoint_url="http://127.0.0.1:1",
        connect_timeout=3,
        read_timeout=30,
        max_pool_connections=8,
    )
    config = store.client.meta.config
    assert config.request_checksum_calculation == "when_required"
    assert config.response_checksum_validation == "when_required"
    assert config.signature_version == "s3v4"
    # botocore's `max_attempts` counts retries: 2 retries = 3 attempts in all.
    assert config.retries == {"mode": "standard", "total_max_attempts": 3}
    assert (config.connect_timeout, config.read_timeout) == (3, 30)
    assert config.max_pool_connections == 8
    assert config.s3 == {"addressing_style": "path"}


def test_client_is_created_once(s3_bucket, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    server, bucket = s3_bucket
    store = make_store(server, bucket)
    client = store.client

    def no_new_clients(*args, **kwargs):
        raise AssertionError("a new boto3 client was created")

    monkeypatch.setattr(boto3.session.Session, "client", no_new_clients)
    monkeypatch.setattr(boto3, "client", no_new_clients)
    store.put("a.png", b"1")
    store.get("a.png")
    store.exists("a.png")
    store.presigned_url("a.png", 60)
    store.ping()
    store.delete("a.png")
    assert store.client is client
    assert store._client is client


def test_ping(s3_bucket) -> None:  # noqa: F811
    server, bucket = s3_bucket
    make_store(server, bucket).ping()
    with pytest.raises(StorageUnavailable, match="no-such-bucket"):
        make_store(server, "no-such-bucket").ping()


def test_outage_raises_storage_unavailable_without_the_secret(s3_bucket) -> None:  # noqa: F811
    server, bucket = s3_bucket
    store = make_store(server, bucket, secret_access_key=SECRET)
    store.put("images/before.png", b"ok")

    server.stop()
    try:
        for call in (
            lambda: store.put("images/a.png", b"x"),
            lambda: store.get("images/before.png"),
            lambda: store.exists("images/before.png"),
            lambda: store.delete("images/before.png"),
            store.ping,
        ):
            with pytest.raises(StorageUnavailable) as info:
                call()
            message = str(info.value)
            assert SECRET not in message and SECRET not in repr(info.value)
            assert bucket in message
            assert server.endpoint_url in message
    finally:
        server.start()

    # moto lost its state on restart: the bucket is gone until recreated.
    with pytest.raises(StorageUnavailable):
        store.put("images/a.png", b"x")
    server.create_bucket(bucket)
    store.put("images/a.png", b"back")
    assert store.get("images/a.png") == b"back"


def test_bucket_fixture_survives_a_stopped_server(s3_bucket) -> None:  # noqa: F811
    server, bucket = s3_bucket
    server.stop()  # left stopped on purpose: the next test's fixture restarts it
    assert not server.running


def test_server_is_running_again(s3_bucket) -> None:  # noqa: F811
    server, bucket = s3_bucket
    assert server.running
    assert server.client().head_bucket(Bucket=bucket)
