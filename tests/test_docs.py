"""Docs that can't rot: every setting and config field appears in the README."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from gateway.config import ImageModelConfig, PostModelConfig
from gateway.settings import SETTINGS_DOC
from providers.registry import provider_types
from storage.config import StorageConfig

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(SETTINGS_DOC))
def test_every_setting_is_documented(name: str) -> None:
    assert f"`{name}`" in README


@pytest.mark.parametrize(
    "field", sorted(set(PostModelConfig.model_fields) | set(ImageModelConfig.model_fields))
)
def test_every_model_field_is_documented(field: str) -> None:
    assert f"`{field}`" in README


@pytest.mark.parametrize(
    ("type_name", "field"),
    [
        (t, f)
        for t, cls in sorted(provider_types().items())
        if cls.__module__.startswith("providers.")  # not the fakes tests register
        for f in cls.Options.model_fields
    ],
)
def test_every_provider_option_is_documented(type_name: str, field: str) -> None:
    assert f"`{type_name}` provider options" in README
    assert f"`{field}`" in README


def test_example_config_is_valid() -> None:
    import httpx

    from gateway.config import ConfigFile, build_config

    raw = yaml.safe_load((ROOT / "data" / "inkgate.example.yaml").read_text())
    config = build_config(ConfigFile.model_validate(raw), httpx.AsyncClient())
    assert {"redink", "redink-plan", "poster"} <= set(config.model_ids())


def test_ci_runs_the_readme_test_command() -> None:
    command = (
        'python3 -m venv .venv && .venv/bin/pip install -e ".[test]" && .venv/bin/python -m pytest'
    )
    assert command in README
    assert command in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(StorageConfig)])
def test_every_storage_option_has_its_setting(name: str) -> None:
    """Each `storage:` option in inkgate.yaml is also an INKGATE_ variable, documented."""
    assert f"INKGATE_{name.upper()}" in SETTINGS_DOC
