"""Serving, thumbnails, URL modes, the result cache and the admin cache/images API, on an
app whose bucket is a real S3 server (moto over HTTP)."""

from __future__ import annotations

import asyncio
import dataclasses
import io

import httpx
import pytest
from PIL import Image as PILImage

from gateway.app import create_app
from gateway.settings import Settings
from storage.images import blob_key
from tests.conftest import MASTER_KEY
from tests.s3_server import DUMMY_KEY

CONFIG = (
    "models:\n"
    "  poster: {type: image, provider: local}\n"
    "  cached: {type: image, provider: local, result_cache_seconds: 3600}\n"
)


def s3_settings(settings: Settings, s3_bucket, **extra) -> Settings:
    server, bucket = s3_bucket
    return dataclasses.replace(
        settings,
        storage="s3",
        s3_bucket=bucket,
        s3_access_key_id=DUMMY_KEY,
        s3_secret_access_key=DUMMY_KEY,
        s3_endpoint_url=server.endpoint_url,
        s3_prefix="gw/",
        **extra,
    )


@pytest.fixture
async def s3_client(settings: Settings, s3_bucket, request):
    extra = getattr(request, "param", {})
    settings = s3_settings(settings, s3_bucket, **extra)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.config_path.write_text(CONFIG)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {MASTER_KEY}"},
        ) as client:
            client.services = app.state.services
            yield client


async def make_image(client, model: str = "poster", prompt: str = "a red fox") -> str:
    r = await client.post("/v1/images/generations", json={"model": model, "prompt": prompt})
    assert r.status_code == 200, r.text
    return r.json()["data"][0]["url"].removeprefix("http://testserver")


async def wait_uploaded(client, image_id: str) -> None:
    for _ in range(200):
        r = await client.get("/admin/api/images", params={"state": "uploaded"})
        if any(i["id"] == image_id for i in r.json()["data"]):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("not uploaded")


def image_id_of(url: str) -> str:
    return url.rsplit("/", 1)[1].rpartition(".")[0]


async def test_images_are_served_hot_with_etag_head_and_304(s3_client) -> None:
    url = await make_image(s3_client)
    first = await s3_client.get(url)
    assert first.status_code == 200 and first.headers["content-type"] == "image/png"
    again = await s3_client.get(url)  # from memory this time
    assert again.content == first.content
    assert again.headers["etag"] == first.headers["etag"]
    assert again.headers["cache-control"] == "public, max-age=31536000, immutable"
    head = await s3_client.head(url)
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(first.content)
    cached = await s3_client.get(url, headers={"If-None-Match": first.headers["etag"]})
    assert cached.status_code == 304 and cached.content == b""
    assert (await s3_client.get("/images/img_nope.png")).status_code == 404


async def test_thumbnails(s3_client) -> None:
    url = await make_image(s3_client)
    image_id = image_id_of(url)
    r = await s3_client.get(f"/images/{image_id}/thumb")
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
    with PILImage.open(io.BytesIO(r.content)) as thumb:
        assert max(thumb.size) <= 320
    assert (await s3_client.get(f"/images/{image_id}/thumb")).content == r.content
    assert (await s3_client.get("/images/img_nope/thumb")).status_code == 404


async def test_the_app_uploads_and_reads_through_after_local_copies_are_cleared(
    s3_client, s3_bucket
) -> None:
    url = await make_image(s3_client)
    original = (await s3_client.get(url)).content
    image_id = image_id_of(url)
    await wait_uploaded(s3_client, image_id)
    stats = (await s3_client.get("/admin/api/cache/stats")).json()
    assert stats["remote"]["count"] == 1 and stats["pending"]["count"] == 0

    r = await s3_client.post("/admin/api/cache/clear-local")
    assert r.json()["cleared"] == 1
    services = s3_client.services
    row = await services.images.get(image_id)
    assert not services.images.path(row).exists()
    again = await s3_client.get(url)
    assert again.status_code == 200 and again.content == original
    assert services.images.path(row).exists()  # cached locally again


async def test_admin_list_sort_filter_and_delete(s3_client, s3_bucket) -> None:
    urls = [await make_image(s3_client, prompt=f"picture {i}") for i in range(3)]
    ids = [image_id_of(u) for u in urls]
    for image_id in ids:
        await wait_uploaded(s3_client, image_id)
    listing = (await s3_client.get("/admin/api/images", params={"per_page": 2})).json()
    assert listing["total"] == 3 and len(listing["data"]) == 2
    assert [i["id"] for i in listing["data"]] == ids[::-1][:2]  # newest first
    item = listing["data"][0]
    assert item["remote_state"] == "uploaded" and item["local"] is True
    assert item["thumb_url"].endswith(f"/images/{item['id']}/thumb")
    by_size = await s3_client.get("/admin/api/images", params={"sort": "size", "order": "asc"})
    sizes = [i["size_bytes"] for i in by_size.json()["data"]]
    assert sizes == sorted(sizes)
    bad = await s3_client.get("/admin/api/images", params={"sort": "colour"})
    assert bad.status_code == 400 and bad.json()["error"]["param"]

    r = await s3_client.post("/admin/api/images/delete", json={"ids": [ids[0]], "scope": "local"})
    assert r.json()["deleted"] == [ids[0]]
    local = (await s3_client.get("/admin/api/images", params={"state": "local"})).json()
    assert {i["id"] for i in local["data"]} == set(ids[1:])

    r = await s3_client.delete(f"/admin/api/images/{ids[1]}", params={"scope": "all"})
    assert r.status_code == 200
    assert (await s3_client.get(urls[1])).status_code == 404
    server, bucket = s3_bucket
    keys = {o["Key"] for o in server.client().list_objects_v2(Bucket=bucket).get("Contents", [])}
    kept = [await s3_client.services.images.get(i) for i in (ids[0], ids[2])]
    assert keys == {"gw/" + blob_key(r.sha256, r.ext) for r in kept}
    assert (await s3_client.delete("/admin/api/images/img_nope")).status_code == 404


async def test_outage_then_upload_pending_and_retry_failed(s3_client, s3_bucket) -> None:
    server, bucket = s3_bucket
    server.stop()
    try:
        url = await make_image(s3_client)
        assert (await s3_client.get(url)).status_code == 200  # served from disk meanwhile
        for _ in range(100):
            stats = (await s3_client.get("/admin/api/cache/stats")).json()
            listing = (await s3_client.get("/admin/api/images")).json()["data"]
            if listing and listing[0]["upload_attempts"] >= 1 and listing[0]["last_error"]:
                break
            await asyncio.sleep(0.05)
        assert stats["pending"]["count"] == 1
        assert "unavailable" in listing[0]["last_error"]
        assert DUMMY_KEY not in str(listing)  # no secret in answers
    finally:
        server.start()
        server.create_bucket(bucket)
    r = await s3_client.post("/admin/api/cache/upload-pending")
    assert r.json()["queued"] == 1
    await wait_uploaded(s3_client, image_id_of(url))
    assert (await s3_client.post("/admin/api/cache/retry-failed")).json() == {"queued": 0}


async def test_cleanup_now_and_the_admin_api_needs_the_master_key(s3_client) -> None:
    r = await s3_client.post("/admin/api/cache/cleanup")
    assert r.status_code == 200 and "ttl_evicted" in r.json()
    _, plaintext = await s3_client.services.keys.create("user")
    for method, path in [
        ("GET", "/admin/api/cache/stats"),
        ("POST", "/admin/api/cache/cleanup"),
        ("GET", "/admin/api/images"),
        ("POST", "/admin/api/cache/clear-local"),
    ]:
        r = await s3_client.request(method, path, headers={"Authorization": f"Bearer {plaintext}"})
        assert r.status_code == 403, (path, r.text)
        r = await s3_client.request(method, path, headers={"Authorization": ""})
        assert r.status_code == 401


async def test_result_cache_reuses_identical_requests_and_can_be_purged(s3_client) -> None:
    calls = []
    runner = s3_client.services.runner
    real = runner.generate_image

    async def counting(*args, **kwargs):
        calls.append(args)
        return await real(*args, **kwargs)

    runner.generate_image = counting
    first = await make_image(s3_client, "cached", "a lighthouse")
    second = await make_image(s3_client, "cached", "a lighthouse")
    other = await make_image(s3_client, "cached", "a lighthouse at night")
    uncached = [await make_image(s3_client, "poster", "a lighthouse") for _ in range(2)]
    assert first == second and other != first and uncached[0] != uncached[1]
    assert len(calls) == 4
    assert (await s3_client.delete("/admin/api/cache/results")).json() == {"purged": 2}
    assert await make_image(s3_client, "cached", "a lighthouse") != first
    assert len(calls) == 5


@pytest.mark.parametrize(
    "s3_client",
    [{"image_urls": "presigned", "presign_seconds": 600}],
    indirect=True,
)
async def test_presigned_mode_redirects_uploaded_images_to_the_bucket(s3_client) -> None:
    url = await make_image(s3_client)
    await wait_uploaded(s3_client, image_id_of(url))
    r = await s3_client.get(url)
    assert r.status_code == 302
    location = r.headers["location"]
    assert "X-Amz-Expires=600" in location and "X-Amz-Signature=" in location
    async with httpx.AsyncClient() as outside:
        fetched = await outside.get(location)
    row = await s3_client.services.images.get(image_id_of(url))
    assert fetched.status_code == 200 and len(fetched.content) == row.size_bytes
    listing = (await s3_client.get("/admin/api/images")).json()["data"]
    assert listing[0]["direct_url"].startswith(location.split("?")[0])


@pytest.mark.parametrize(
    "s3_client",
    [{"image_urls": "public", "s3_public_base_url": "https://img.example.com/"}],
    indirect=True,
)
async def test_public_mode_redirects_to_the_buckets_domain_once_uploaded(s3_client) -> None:
    url = await make_image(s3_client)
    image_id = image_id_of(url)
    await wait_uploaded(s3_client, image_id)
    row = await s3_client.services.images.get(image_id)
    r = await s3_client.get(url)
    assert r.status_code == 302
    assert r.headers["location"] == f"https://img.example.com/gw/{blob_key(row.sha256, row.ext)}"


async def test_ready_reports_the_bucket_without_failing_on_an_outage(s3_client, s3_bucket) -> None:
    server, bucket = s3_bucket
    r = await s3_client.get("/ready")
    assert r.status_code == 200 and r.json()["bucket"] == "ok"
    server.stop()
    try:
        r = await s3_client.get("/ready")
        assert r.status_code == 200 and r.json()["bucket"].startswith("unreachable")
        assert DUMMY_KEY not in r.text
    finally:
        server.start()
        server.create_bucket(bucket)


async def test_a_thumbnail_of_an_evicted_image_reads_through(s3_client) -> None:
    url = await make_image(s3_client)
    image_id = image_id_of(url)
    await wait_uploaded(s3_client, image_id)
    await s3_client.post("/admin/api/cache/clear-local")
    r = await s3_client.get(f"/images/{image_id}/thumb")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/webp"


@pytest.mark.parametrize("s3_client", [{"x_accel_redirect": "/_blobs/"}], indirect=True)
async def test_x_accel_redirect_hands_local_files_to_nginx(s3_client) -> None:
    url = await make_image(s3_client)
    image_id = image_id_of(url)
    row = await s3_client.services.images.get(image_id)
    for _ in range(2):  # the first and the later requests alike: never from memory
        r = await s3_client.get(url)
        assert r.status_code == 200 and r.content == b""
        assert r.headers["x-accel-redirect"] == "/_blobs/" + blob_key(row.sha256, row.ext)
        assert r.headers["content-type"] == "image/png"
    thumb = await s3_client.get(f"/images/{image_id}/thumb")
    assert thumb.headers["x-accel-redirect"] == f"/_blobs/thumbs/{row.sha256[:2]}/{row.sha256}.webp"


def test_x_accel_redirect_must_be_a_location() -> None:
    from storage.config import StorageConfig, StorageConfigError

    with pytest.raises(StorageConfigError, match="X_ACCEL_REDIRECT"):
        StorageConfig(x_accel_redirect="_blobs").validate()
