from __future__ import annotations

import textwrap
from pathlib import Path

import httpx
import pytest

from gateway.config import ConfigError, ConfigSource, read_sources, substitute_env
from gateway.redink_files import api_root, openai_base
from tests.conftest import MASTER_KEY
from tests.fakes.openai_upstream import create_fake_openai

QWEN_TEXT = """\
active_provider: qwen
providers:
  qwen:
    api_key: test
    base_url: http://10.0.0.32:20080
    endpoint_type: /v1/chat/completions
    model: Qwen3-14B
    type: openai_compatible
"""

RELAY_IMAGE = """\
active_provider: 七牛
providers:
  七牛:
    api_key: ${RELAY_KEY}
    base_url: https://api.qnaigc.com
    endpoint_type: /v1/images/edits
    high_concurrency: false
    model: gemini-3.0-pro-image-preview
    short_prompt: false
    type: image_api
"""


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")


def test_substitute_env() -> None:
    env = {"KEY": "sk-1", "EMPTY": ""}
    data = {
        "a": "${KEY}",
        "b": ["x-${KEY}-y", "${MISSING:-dflt}", "$${KEY}"],
        "c": 3,
        "d": "${EMPTY}",
    }
    assert substitute_env(data, env) == {
        "a": "sk-1",
        "b": ["x-sk-1-y", "dflt", "${KEY}"],
        "c": 3,
        "d": "",
    }
    with pytest.raises(ConfigError, match=r"providers.relay.api_key: environment variable NOPE"):
        substitute_env({"providers": {"relay": {"api_key": "${NOPE}"}}}, env)


@pytest.mark.parametrize(
    ("base", "root"),
    [
        ("https://api.openai.com/v1", "https://api.openai.com"),
        ("https://api.openai.com/v1/", "https://api.openai.com"),
        ("https://api.openai.co", "https://api.openai.co"),
        ("https://api.openai.co/", "https://api.openai.co"),
        ("http://10.0.0.32:20080", "http://10.0.0.32:20080"),
        ("https://relay.example/proxy/v1", "https://relay.example/proxy"),
        ("https://relay.example/apiv1", "https://relay.example/apiv1"),
    ],
)
def test_api_root_drops_only_a_v1_segment(base: str, root: str) -> None:
    assert api_root(base) == root


@pytest.mark.parametrize(
    ("base", "endpoint", "expected"),
    [
        ("https://api.qnaigc.com", "/v1/images/edits", "https://api.qnaigc.com/v1"),
        ("https://api.openai.com/v1", "/v1/chat/completions", "https://api.openai.com/v1"),
        ("https://x.example/", "images", "https://x.example/v1"),
        ("https://x.example", "chat", "https://x.example/v1"),
        ("https://x.example", "/api/v3/chat/completions", "https://x.example/api/v3"),
        ("https://x.example/v1", None, "https://x.example/v1"),
    ],
)
def test_openai_base(base, endpoint, expected) -> None:
    assert openai_base(base, endpoint) == expected


def test_redink_files_exact_shape(tmp_path: Path) -> None:
    write(tmp_path / "text_providers.yaml", QWEN_TEXT)
    write(tmp_path / "image_providers.yaml", RELAY_IMAGE)
    file = read_sources(None, tmp_path, {"RELAY_KEY": "sk-relay"})
    model = file.models["redink"]
    assert model.text_provider == "text:qwen" and model.image_provider == "image:七牛"
    assert model.concurrency == 1 and model.short_prompt is False
    assert file.providers["text:qwen"] == {
        "type": "openai",
        "base_url": "http://10.0.0.32:20080/v1",
        "api_key": "test",
        "text_model": "Qwen3-14B",
    }
    image = file.providers["image:七牛"]
    assert image["base_url"] == "https://api.qnaigc.com/v1" and image["api_key"] == "sk-relay"
    assert (
        image["image_endpoint"] == "images"
        and image["image_model"] == "gemini-3.0-pro-image-preview"
    )


def test_high_concurrency_and_aspect_ratio(tmp_path: Path) -> None:
    write(
        tmp_path / "image_providers.yaml",
        "active_provider: a\nproviders:\n  a: {type: image_api, base_url: 'https://x', model: m,"
        " high_concurrency: true, default_aspect_ratio: '2:3', endpoint_type: chat}\n",
    )
    file = read_sources(None, tmp_path, {})
    model = file.models["redink"]
    assert (
        model.concurrency == 15 and model.aspect_ratio == "2:3" and model.text_provider == "local"
    )
    assert file.providers["image:a"]["image_endpoint"] == "chat"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("providers: {a: {type: openai_compatible}}\n", "no active_provider"),
        ("active_provider: b\nproviders: {a: {type: openai_compatible}}\n", "'b' is not among"),
        ("active_provider: a\nproviders: {a: {type: claude}}\n", "text types are"),
        (
            "active_provider: a\nproviders: {a: {type: openai_compatible, endpoint_type: /v1/x}}\n",
            "endpoint_type",
        ),
        ("active_provider: [a\n", "not valid YAML"),
    ],
)
def test_bad_redink_files_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    write(tmp_path / "text_providers.yaml", text)
    with pytest.raises(ConfigError, match=message):
        read_sources(None, tmp_path, {})


def test_inkgate_yaml_redink_model_wins(tmp_path: Path) -> None:
    write(tmp_path / "text_providers.yaml", QWEN_TEXT)
    write(tmp_path / "inkgate.yaml", "models:\n  redink: {type: redink, concurrency: 7}\n")
    file = read_sources(tmp_path / "inkgate.yaml", tmp_path, {})
    assert file.models["redink"].concurrency == 7 and file.models["redink"].text_provider == "local"


async def test_reload_on_change_keeps_last_good_config(tmp_path: Path) -> None:
    config = tmp_path / "inkgate.yaml"
    async with httpx.AsyncClient() as http:
        source = ConfigSource(config, tmp_path, http, {})
        await source.load()
        assert source.current.model_ids() == ["redink", "redink-plan"]
        assert not await source.reload_if_changed()
        write(config, "models:\n  poster: {type: image, provider: local}\n")
        assert await source.reload_if_changed()
        assert "poster" in source.current.model_ids()
        write(config, "models:\n  poster: {type: image, provider: nowhere}\n")
        assert not await source.reload_if_changed()
        assert "poster" in source.current.model_ids() and "nowhere" in source.error
        write(config, "models: {}\n")
        assert await source.reload_if_changed() and source.error is None
        assert "poster" not in source.current.model_ids()


async def test_app_picks_up_config_edits(app, client: httpx.AsyncClient, settings) -> None:
    assert "poster" not in [m["id"] for m in (await client.get("/v1/models")).json()["data"]]
    write(settings.config_path, "models:\n  poster: {type: image, provider: local}\n")
    assert await app.state.config_source.reload_if_changed()
    ids = [m["id"] for m in (await client.get("/v1/models")).json()["data"]]
    assert "poster" in ids


@pytest.fixture
def fake_upstream():
    return create_fake_openai(api_key="sk-relay", outline_pages=4)


@pytest.fixture
def redink_settings(settings, fake_upstream, monkeypatch):
    write(
        settings.data_dir / "text_providers.yaml",
        QWEN_TEXT.replace("http://10.0.0.32:20080", "http://fake").replace(
            "api_key: test", "api_key: sk-relay"
        ),
    )
    write(
        settings.data_dir / "image_providers.yaml",
        RELAY_IMAGE.replace("https://api.qnaigc.com", "http://fake"),
    )
    monkeypatch.setenv("RELAY_KEY", "sk-relay")
    return settings


async def test_a_post_through_redink_files(redink_settings, fake_upstream, monkeypatch) -> None:
    from gateway.app import create_app

    real_client = httpx.AsyncClient

    def to_fake(*args, **kwargs):  # the gateway's upstream client talks to the in-process fake
        kwargs["transport"] = httpx.ASGITransport(app=fake_upstream)
        return real_client(*args, **kwargs)

    monkeypatch.setattr("gateway.app.httpx.AsyncClient", to_fake)
    application = create_app(redink_settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with real_client(
            transport=transport,
            base_url="http://t",
            headers={"Authorization": f"Bearer {MASTER_KEY}"},
        ) as c:
            r = await c.post(
                "/v1/chat/completions",
                json={
                    "model": "redink",
                    "messages": [{"role": "user", "content": "三岁宝宝冬季保暖攻略"}],
                },
                timeout=60,
            )
    assert r.status_code == 200, r.text
    post = r.json()["post"]
    assert post["status"] == "completed" and len(post["pages"]) == 4
    sent = fake_upstream.state.requests
    chat = [q for q in sent if q["path"] == "/v1/chat/completions"]
    assert chat and chat[0]["json"]["model"] == "Qwen3-14B"
    assert chat[0]["headers"]["authorization"] == "Bearer sk-relay"
    edits = [q for q in sent if q["path"] == "/v1/images/edits"]
    gens = [q for q in sent if q["path"] == "/v1/images/generations"]
    assert len(gens) == 1 and len(edits) == 3  # the cover has no reference; the rest use it
    assert fake_upstream.state.max_images_in_flight == 1  # high_concurrency: false
    assert all(q["fields"]["model"] == "gemini-3.0-pro-image-preview" for q in edits)


async def test_a_post_through_redink_gemini_files(settings, monkeypatch) -> None:
    from gateway.app import create_app
    from tests.fakes.gemini_upstream import create_fake_gemini

    fake = create_fake_gemini(api_key="fake-gemini-key", outline_pages=3)
    write(
        settings.data_dir / "text_providers.yaml",
        "active_provider: gemini\nproviders:\n  gemini:\n    type: google_gemini\n"
        "    api_key: ${GEMINI_KEY}\n    base_url: http://fake\n    model: gemini-2.0-flash\n",
    )
    write(
        settings.data_dir / "image_providers.yaml",
        "active_provider: gemini\nproviders:\n  gemini:\n    type: google_genai\n"
        "    api_key: ${GEMINI_KEY}\n    base_url: http://fake\n"
        "    model: gemini-3-pro-image-preview\n    high_concurrency: true\n    image_size: 2K\n",
    )
    monkeypatch.setenv("GEMINI_KEY", "fake-gemini-key")
    real_client = httpx.AsyncClient

    def to_fake(*args, **kwargs):
        kwargs["transport"] = httpx.ASGITransport(app=fake)
        return real_client(*args, **kwargs)

    monkeypatch.setattr("gateway.app.httpx.AsyncClient", to_fake)
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        async with real_client(
            transport=httpx.ASGITransport(app=application),
            base_url="http://t",
            headers={"Authorization": f"Bearer {MASTER_KEY}"},
        ) as c:
            r = await c.post(
                "/v1/images/generations",
                json={"model": "redink", "prompt": "秋季显白美甲", "n": 3},
                timeout=60,
            )
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]) == 3
    sent = fake.state.requests
    assert all(q["headers"]["x-goog-api-key"] == "fake-gemini-key" for q in sent)
    text = [q for q in sent if "gemini-2.0-flash:" in q["path"]]
    images = [q for q in sent if "gemini-3-pro-image-preview:" in q["path"]]
    assert len(text) == 2 and len(images) == 3  # the outline, then the post copy
    config = images[0]["json"]["generationConfig"]
    assert config["imageConfig"] == {"aspectRatio": "3:4", "imageSize": "2K"}
    # pages after the cover carry it as an inlineData part before the text
    later = images[1]["json"]["contents"][0]["parts"]
    assert "inlineData" in later[0] and "text" in later[-1]
