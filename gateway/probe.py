"""`inkgate providers test`: a real, cheap call to each provider, reported in plain words.

A provider is probed for the roles the configured models use it for (text, image),
or for every capability it has when no model uses it. Text: a tiny chat. Image: the
upstream's model list (is the configured model offered?), or with `deep` one small
image.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import anyio

from gateway.config import GatewayConfig, PostModelConfig
from gateway.errors import (
    ContentPolicyViolation,
    GatewayError,
    RateLimited,
    UpstreamTimeout,
)
from providers.base import ImageProvider, ImageRequest, Provider, TextProvider

TEXT_TIMEOUT = 30.0
IMAGE_TIMEOUT = 150.0


@dataclass
class Check:
    check: str  # text | models | image
    ok: bool
    detail: str
    latency_ms: int


@dataclass
class ProviderReport:
    provider: str
    type: str
    ok: bool
    checks: list[Check] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def plain_words(exc: GatewayError, timeout: float) -> str:
    """What went wrong, for a person: bad key / unreachable / timeout / wrong model."""
    if isinstance(exc, UpstreamTimeout):
        return f"timeout: no answer within {timeout:.0f} s"
    if exc.code == "upstream_auth_failed":
        return "bad key: the upstream rejected the credentials"
    if isinstance(exc, RateLimited):
        return "rate limited: the key works, but the account is over its limit right now"
    if exc.message.startswith("Could not reach"):
        return f"unreachable: {exc.message}"
    if "(404)" in exc.message:
        return f"wrong model or base_url: {exc.message}"
    return exc.message


def roles(config: GatewayConfig, name: str, provider: Provider) -> list[str]:
    used: set[str] = set()
    for model in config.post_models.values():
        if model.text_provider == name:
            used.add("text")
        if model.image_provider == name:
            used.add("image")
    if any(m.provider == name for m in config.image_models.values()):
        used.add("image")
    if not used:
        used = {
            r
            for r, cls in (("text", TextProvider), ("image", ImageProvider))
            if isinstance(provider, cls)
        }
    return sorted(used, key=["text", "image"].index)


def _text_model(config: GatewayConfig, name: str) -> str | None:
    for model in config.post_models.values():
        if isinstance(model, PostModelConfig) and model.text_provider == name and model.text_model:
            return model.text_model
    return None


def _image_model(config: GatewayConfig, name: str, provider: Provider) -> str | None:
    for model in config.post_models.values():
        if model.image_provider == name and model.image_model:
            return model.image_model
    for model in config.image_models.values():
        if model.provider == name and model.model:
            return model.model
    return provider.configured_models().get("image")


async def _timed(check: str, timeout: float, call) -> Check:
    started = time.perf_counter()
    try:
        with anyio.fail_after(timeout):
            detail = await call()
        ok = True
    except TimeoutError:
        ok, detail = False, plain_words(UpstreamTimeout("timeout"), timeout)
    except ContentPolicyViolation as exc:  # reached the model: the test prompt was refused
        ok, detail = True, f"reachable; the test prompt was refused ({exc.message})"
    except GatewayError as exc:
        ok, detail = False, plain_words(exc, timeout)
    return Check(check, ok, detail, int((time.perf_counter() - started) * 1000))


async def probe(config: GatewayConfig, name: str, deep: bool = False) -> ProviderReport:
    provider = config.providers[name]
    report = ProviderReport(name, provider.type, ok=True)
    for role in roles(config, name, provider):
        if role == "text" and isinstance(provider, TextProvider):
            model = _text_model(config, name)

            async def chat(p: TextProvider = provider, m: str | None = model) -> str:
                answer = await p.chat(
                    [{"role": "user", "content": "Reply with the single word: OK"}],
                    model=m,
                    max_tokens=16,
                )
                return f"answered {answer.strip()[:40]!r}"

            report.checks.append(await _timed("text", TEXT_TIMEOUT, chat))
        if role == "image" and isinstance(provider, ImageProvider):
            model = _image_model(config, name, provider)
            report.checks.append(
                await _timed("models", TEXT_TIMEOUT, lambda m=model: _listed(provider, m))
            )
            if deep:

                async def draw(p: ImageProvider = provider, m: str | None = model) -> str:
                    images = await p.generate(
                        ImageRequest(
                            prompt="A small red circle on a white background.",
                            aspect_ratio="1:1",
                            model=m,
                        )
                    )
                    return f"drew {len(images)} image(s), {len(images[0].data)} bytes, {images[0].mime}"

                report.checks.append(await _timed("image", IMAGE_TIMEOUT, draw))
    report.ok = all(c.ok for c in report.checks)
    return report


async def _listed(provider: Provider, model: str | None) -> str:
    ids = await provider.list_models()
    if ids is None:
        return "no model list here; run with --deep to draw one small image"
    if model and ids and model not in ids:
        shown = ", ".join(sorted(ids)[:8])
        raise GatewayError(f"wrong model: {model!r} is not offered (offered: {shown}…)")
    return f"key accepted; {len(ids)} models offered" + (f", {model!r} among them" if model else "")


async def probe_all(
    config: GatewayConfig, name: str | None = None, deep: bool = False
) -> list[ProviderReport]:
    if name is not None and name not in config.providers:
        raise KeyError(name)
    names = (
        [name]
        if name
        else [n for n in config.providers if n != "local" or len(config.providers) == 1]
    )
    return [await probe(config, n, deep) for n in names]
