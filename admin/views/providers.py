"""The "Providers & models" page: the `redink` model's providers and concurrency, every
provider (add, edit, override a file one, delete, test) and every model.

It reads through admin/providers_api.py's route functions, so the page shows what
`/admin/api/providers` and `/admin/api/models` answer (secrets masked); every change
goes through that API from providers.js. Saved entries live in the database, so every
replica picks them up.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from admin import providers_api
from admin.auth import SignedIn
from admin.i18n import add, language, translator
from admin.views import page_session, render
from admin.views.images import _script_json
from admin.views.posts import _operator

router = APIRouter(include_in_schema=False)
NAV = ("providers", "/admin/providers")

ASPECT_RATIOS = ("3:4", "1:1", "4:3", "9:16", "16:9", "2:3", "3:2")
SOURCES = ("database", "file", "redink", "builtin")
# what providers.js says, in the page's language
JS_STRINGS = (
    "providers.new", "providers.edit_title", "providers.override_title", "providers.keep_secret",
    "providers.secret_not_copied", "providers.secret_new", "providers.required",
    "providers.default", "providers.json_hint", "providers.bad_json", "providers.testing",
    "providers.test_ok", "providers.test_failed", "providers.no_checks",
    "providers.confirm_deep", "providers.saved", "providers.deleted", "providers.nothing_changed",
    "providers.secret_headers_blank", "models.new_image", "models.edit_title",
    "models.saved", "common.yes", "common.no",
)  # fmt: skip


def _dotted(options: dict, path: str):
    value = options
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _summary(model: dict) -> list[tuple[str, str]]:
    """(label key, value) pairs that say what a model does, for its table row."""
    d = model["definition"] or {}
    if model["type"] == "redink":
        pairs = [
            ("models.text", "/".join(x for x in (d.get("text_provider"), d.get("text_model")) if x)),
            ("models.image", "/".join(x for x in (d.get("image_provider"), d.get("image_model")) if x)),
            ("models.concurrency", str(d.get("concurrency", ""))),
            ("models.aspect_ratio", d.get("aspect_ratio") or ""),
        ]  # fmt: skip
    elif model["type"] in ("image", "video"):
        pairs = [
            ("models.provider", "/".join(x for x in (d.get("provider"), d.get("model")) if x)),
            ("models.aspect_ratio", d.get("aspect_ratio") or ""),
        ]
        if model["type"] == "image" and d.get("result_cache_seconds"):
            pairs.append(("models.cache", f"{d['result_cache_seconds']} s"))
        if model["type"] == "video":
            pairs += [
                ("models.seconds", f"{d.get('seconds')} s"),
                ("models.mode", d.get("mode") or ""),
            ]
    else:
        pairs = []
    return [(k, v) for k, v in pairs if v]


@router.get("/admin/providers", response_class=HTMLResponse)
async def providers_page(
    request: Request, signed_in: Annotated[SignedIn, Depends(page_session)]
) -> HTMLResponse:
    operator = _operator(signed_in)
    listing = await providers_api.list_providers(request, operator)
    model_listing = await providers_api.list_models(request, operator)
    providers, models = listing["data"], model_listing["data"]
    for p in providers:
        p["secrets_shown"] = [(f, _dotted(p["options"], f)) for f in p["secret_fields"]]
    for m in models:
        m["summary"] = _summary(m)
    redink = next((m for m in models if m["name"] == "redink"), None)
    usable = [p for p in providers if p["active"]]

    def able(kind: str, current: str | None) -> list[str]:
        names = [p["name"] for p in usable if kind in p["capabilities"]]
        return names + ([current] if current and current not in names else [])

    definition = redink["definition"] if redink else {}
    aspects = list(ASPECT_RATIOS)
    for m in models:
        ratio = (m["definition"] or {}).get("aspect_ratio")
        if ratio and ratio not in aspects:
            aspects.append(ratio)
    t = translator(language(request))
    problems = [*listing["problems"]]
    problems += [p for p in model_listing["problems"] if p not in problems]
    return render(
        request,
        "providers.html",
        signed_in=signed_in,
        active="providers",
        providers=providers,
        models=models,
        redink=redink,
        text_providers=able("text", definition.get("text_provider")),
        image_providers=able("image", definition.get("image_provider")),
        aspect_ratios=aspects,
        types=listing["types"],
        config_error=listing["config_error"],
        problems=problems,
        schemas=model_listing["schemas"],
        page_data=_script_json(
            {
                "providers": providers,
                "types": listing["types"],
                "models": models,
                "image_providers": [p["name"] for p in usable if "image" in p["capabilities"]],
                "video_providers": [p["name"] for p in usable if "video" in p["capabilities"]],
                "strings": {key: t(key) for key in JS_STRINGS},
            }
        ),
    )


add(
    {
        "en": {
            "providers.title": "Providers & models",
            "providers.intro": "Saved here, a provider or model is stored in the database: every replica uses it within a few seconds. One saved with the name of a file entry overrides that entry until it is deleted.",
            "providers.config_error": "The saved configuration could not be applied",
            "providers.redink": "The redink model",
            "providers.redink_intro": "Which providers write the outline and copy (text) and draw the pages (image) of a post, and how many pages are drawn at once.",
            "providers.redink_missing": "There is no redink model.",
            "providers.text_provider": "Text provider",
            "providers.text_model": "Text model",
            "providers.image_provider": "Image provider",
            "providers.image_model": "Image model",
            "providers.provider_default": "blank: the provider's default",
            "providers.concurrency": "Pages drawn at once",
            "providers.concurrency_hint": "0: the gateway's INKGATE_IMAGE_CONCURRENCY.",
            "providers.aspect_ratio": "Aspect ratio",
            "providers.short_prompt": "Short prompt (for image models with a small prompt limit)",
            "providers.image_size": "Image size",
            "providers.image_size_hint": "e.g. 1K, 2K or 1024x1536; blank: the provider's default.",
            "providers.from": "Definition from",
            "providers.revert_file": "Revert to the file",
            "providers.revert_default": "Revert to the default",
            "providers.confirm_revert": "Delete the saved definition? The one below it applies again.",
            "providers.providers": "Providers",
            "providers.new": "Add provider",
            "providers.type": "Type",
            "providers.source": "Source",
            "providers.capabilities": "Can do",
            "providers.secrets": "Secrets",
            "providers.used_by": "Used by",
            "providers.max_concurrency": "Max concurrency",
            "providers.max_concurrency_hint": "Requests this provider gets at once across the gateway; blank: no limit.",
            "providers.problem": "Problem",
            "providers.source.database": "database",
            "providers.source.file": "file",
            "providers.source.redink": "RedInk file",
            "providers.source.builtin": "built-in",
            "providers.overrides": "overrides {source}",
            "providers.inactive": "not in use",
            "providers.test": "Test",
            "providers.test_deep": "Test deep",
            "providers.confirm_deep": "A deep test draws one real image with this provider (it may cost money). Go on?",
            "providers.override": "Override",
            "providers.confirm_delete": "Delete the provider {name}?",
            "providers.edit_title": "Edit provider {name}",
            "providers.override_title": "Override {name} with a saved provider",
            "providers.options": "Options",
            "providers.keep_secret": "leave blank to keep {mask}",
            "providers.secret_not_copied": "The file's secret is not copied: enter it, or a ${ENV_NAME} reference.",
            "providers.secret_new": "Write-only: it is stored encrypted and never shown again.",
            "providers.required": "required",
            "providers.default": "default: {value}",
            "providers.json_hint": "JSON",
            "providers.bad_json": "{field}: not valid JSON",
            "providers.secret_headers_blank": "Secret headers are left blank: blank keeps the stored value.",
            "providers.test_connection": "Test connection",
            "providers.testing": "Testing…",
            "providers.test_ok": "Works",
            "providers.test_failed": "Failed",
            "providers.no_checks": "Nothing to check for this provider.",
            "providers.saved": "Provider saved.",
            "providers.deleted": "Provider deleted.",
            "providers.nothing_changed": "Nothing changed.",
            "providers.none": "No providers.",
            "models.title": "Models",
            "models.new_image": "New image model",
            "models.edit_title": "Edit model {name}",
            "models.type": "Type",
            "models.aliases": "Aliases",
            "models.definition": "Definition",
            "models.text": "text",
            "models.image": "image",
            "models.provider": "provider",
            "models.concurrency": "concurrency",
            "models.aspect_ratio": "aspect",
            "models.cache": "cache",
            "models.seconds": "seconds",
            "models.mode": "mode",
            "models.model": "Model",
            "models.model_hint": "blank: the provider's default",
            "models.result_cache": "Reuse identical results for (seconds)",
            "models.result_cache_hint": "0: off.",
            "models.video_seconds": "Seconds (when a request names none)",
            "models.video_mode": "Mode",
            "models.video_mode_hint": "e.g. Kling's std or pro; blank: the provider's.",
            "models.confirm_delete": "Delete the saved model {name}?",
            "models.saved": "Model saved.",
        },
        "zh": {
            "providers.title": "服务商与模型",
            "providers.intro": "在这里保存的服务商和模型存放在数据库中，几秒内所有副本都会生效。与配置文件中同名的条目，保存后会覆盖文件中的设置，删除后恢复文件设置。",
            "providers.config_error": "已保存的配置无法生效",
            "providers.redink": "redink 模型",
            "providers.redink_intro": "图文用哪个服务商写大纲和文案（文本）、用哪个服务商绘制页面（图片），以及同时绘制几页。",
            "providers.redink_missing": "没有 redink 模型。",
            "providers.text_provider": "文本服务商",
            "providers.text_model": "文本模型",
            "providers.image_provider": "图片服务商",
            "providers.image_model": "图片模型",
            "providers.provider_default": "留空：使用服务商的默认模型",
            "providers.concurrency": "同时绘制页数",
            "providers.concurrency_hint": "0：使用网关的 INKGATE_IMAGE_CONCURRENCY。",
            "providers.aspect_ratio": "画面比例",
            "providers.short_prompt": "精简提示词（适合提示词长度受限的图片模型）",
            "providers.image_size": "图片尺寸",
            "providers.image_size_hint": "例如 1K、2K 或 1024x1536；留空：使用服务商默认值。",
            "providers.from": "当前定义来自",
            "providers.revert_file": "恢复为文件中的设置",
            "providers.revert_default": "恢复为默认设置",
            "providers.confirm_revert": "删除已保存的定义？删除后将恢复使用下一层的设置。",
            "providers.providers": "服务商",
            "providers.new": "添加服务商",
            "providers.type": "类型",
            "providers.source": "来源",
            "providers.capabilities": "能力",
            "providers.secrets": "密钥",
            "providers.used_by": "使用者",
            "providers.max_concurrency": "最大并发",
            "providers.max_concurrency_hint": "整个网关同时发给该服务商的请求数上限；留空表示不限。",
            "providers.problem": "问题",
            "providers.source.database": "数据库",
            "providers.source.file": "配置文件",
            "providers.source.redink": "RedInk 文件",
            "providers.source.builtin": "内置",
            "providers.overrides": "覆盖{source}",
            "providers.inactive": "未生效",
            "providers.test": "测试",
            "providers.test_deep": "深度测试",
            "providers.confirm_deep": "深度测试会用该服务商真实生成一张图片（可能产生费用）。继续吗？",
            "providers.override": "覆盖",
            "providers.confirm_delete": "确定删除服务商 {name}？",
            "providers.edit_title": "编辑服务商 {name}",
            "providers.override_title": "保存一个服务商来覆盖 {name}",
            "providers.options": "选项",
            "providers.keep_secret": "留空则保留 {mask}",
            "providers.secret_not_copied": "文件中的密钥不会被复制：请重新填写，或填写 ${ENV_NAME} 环境变量引用。",
            "providers.secret_new": "只写：加密保存，之后不再显示。",
            "providers.required": "必填",
            "providers.default": "默认：{value}",
            "providers.json_hint": "JSON",
            "providers.bad_json": "{field}：不是有效的 JSON",
            "providers.secret_headers_blank": "敏感请求头的值显示为空：留空即保留已保存的值。",
            "providers.test_connection": "测试连接",
            "providers.testing": "测试中…",
            "providers.test_ok": "正常",
            "providers.test_failed": "失败",
            "providers.no_checks": "该服务商没有可测试的项目。",
            "providers.saved": "服务商已保存。",
            "providers.deleted": "服务商已删除。",
            "providers.nothing_changed": "没有改动。",
            "providers.none": "没有服务商。",
            "models.title": "模型",
            "models.new_image": "新建图片模型",
            "models.edit_title": "编辑模型 {name}",
            "models.type": "类型",
            "models.aliases": "别名",
            "models.definition": "定义",
            "models.text": "文本",
            "models.image": "图片",
            "models.provider": "服务商",
            "models.concurrency": "并发",
            "models.aspect_ratio": "比例",
            "models.cache": "缓存",
            "models.seconds": "时长",
            "models.mode": "模式",
            "models.model": "模型",
            "models.model_hint": "留空：使用服务商的默认模型",
            "models.result_cache": "相同请求复用结果的时长（秒）",
            "models.result_cache_hint": "0：关闭。",
            "models.video_seconds": "时长（秒，请求未指定时）",
            "models.video_mode": "模式",
            "models.video_mode_hint": "例如 Kling 的 std 或 pro；留空：使用服务商的设置。",
            "models.confirm_delete": "确定删除已保存的模型 {name}？",
            "models.saved": "模型已保存。",
        },
    }
)
