"""The dashboard's two languages. English and Chinese for every string; the choice is a
cookie (`inkgate_lang`), else the browser's `Accept-Language`.

Each page module adds its own strings with `add({...})`; `tests/admin` checks that
every key exists in both languages.
"""

from __future__ import annotations

from fastapi import Request

LANGS = ("en", "zh")
LANG_COOKIE = "inkgate_lang"

MESSAGES: dict[str, dict[str, str]] = {"en": {}, "zh": {}}


def add(messages: dict[str, dict[str, str]]) -> None:
    """Register strings: `{"en": {key: text}, "zh": {key: text}}`."""
    for lang in LANGS:
        for key, text in messages.get(lang, {}).items():
            if key in MESSAGES[lang] and MESSAGES[lang][key] != text:
                raise ValueError(f"i18n key {key!r} ({lang}) defined twice differently")
            MESSAGES[lang][key] = text


def language(request: Request) -> str:
    chosen = request.cookies.get(LANG_COOKIE)
    if chosen in LANGS:
        return chosen
    # Accept-Language: the first language we have, by the browser's order of preference
    ranked = []
    for i, part in enumerate(request.headers.get("accept-language", "").split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        ranked.append((-q, i, tag.strip().lower()))
    for _, _, tag in sorted(ranked):
        base = tag.split("-")[0]
        if base in LANGS:
            return base
    return "en"


def translator(lang: str):
    table, fallback = MESSAGES.get(lang, MESSAGES["en"]), MESSAGES["en"]

    def t(key: str, **values: object) -> str:
        text = table.get(key) or fallback.get(key) or key
        return text.format(**values) if values else text

    return t


add(
    {
        "en": {
            "app.tagline": "one sentence in, a finished image post out",
            "nav.overview": "Overview",
            "nav.keys": "API keys",
            "nav.providers": "Providers & models",
            "nav.posts": "Posts",
            "nav.images": "Images & cache",
            "nav.logs": "Logs",
            "nav.usage": "Usage",
            "nav.password": "Change password",
            "nav.sign_out": "Sign out",
            "nav.signed_in_as": "Signed in as {name}",
            "lang.switch": "中文",
            "common.save": "Save",
            "common.cancel": "Cancel",
            "common.delete": "Delete",
            "common.edit": "Edit",
            "common.create": "Create",
            "common.close": "Close",
            "common.search": "Search",
            "common.filter": "Filter",
            "common.all": "All",
            "common.none": "None",
            "common.unlimited": "unlimited",
            "common.never": "never",
            "common.yes": "yes",
            "common.no": "no",
            "common.loading": "Loading…",
            "common.saved": "Saved.",
            "common.error": "Something went wrong",
            "common.confirm_delete": "Delete this? It cannot be undone.",
            "common.copy": "Copy",
            "common.copied": "Copied",
            "common.previous": "Previous",
            "common.next": "Next",
            "common.page_of": "Page {page} of {pages}",
            "common.empty": "Nothing here yet.",
            "common.actions": "Actions",
            "common.name": "Name",
            "common.status": "Status",
            "common.created": "Created",
            "common.time": "Time",
            "common.model": "Model",
            "common.refresh": "Refresh",
            "login.title": "Sign in",
            "login.username": "User name",
            "login.password": "Password",
            "login.submit": "Sign in",
            "login.signed_out": "You are signed out.",
            "login.expired": "Your session ended. Sign in again.",
            "setup.title": "Create the first admin",
            "setup.intro": "Enter the setup token InkGate printed when it started (or INKGATE_MASTER_KEY), and choose the admin's user name and password.",
            "setup.token": "Setup token",
            "setup.password_repeat": "Password again",
            "setup.submit": "Create admin",
            "setup.mismatch": "The two passwords differ.",
            "setup.done": "An admin exists already: sign in.",
            "password.title": "Change password",
            "password.current": "Current password",
            "password.new": "New password",
            "password.repeat": "New password again",
            "password.hint": "At least 10 characters. Your other sessions are signed out.",
            "password.changed": "Password changed. Other sessions were signed out.",
            "overview.title": "Overview",
            "overview.today": "Today (UTC)",
            "overview.requests": "Requests",
            "overview.posts": "Posts",
            "overview.images": "Images stored",
            "overview.failures": "Failures (5xx)",
            "overview.client_errors": "Client errors (4xx)",
            "overview.storage": "Storage",
            "overview.local_bytes": "On local disk",
            "overview.remote_bytes": "In the bucket",
            "overview.pending": "Uploads pending",
            "overview.failed_uploads": "Uploads failed",
            "overview.providers": "Providers",
            "overview.health": "Health",
            "overview.check": "Check now",
            "overview.checking": "Checking…",
            "overview.connect": "Connect",
            "overview.connect_text": "OpenAI base URL: {url}. OpenWebUI: Settings → Connections → OpenAI API.",
            "overview.models": "Models",
            "keys.title": "API keys",
            "keys.new": "New key",
            "keys.prefix": "Key",
            "keys.last_used": "Last used",
            "keys.today": "Today",
            "keys.requests_images": "{requests} requests · {images} images",
            "keys.limits": "Limits",
            "keys.allowed_models": "Allowed models",
            "keys.allowed_models_hint": "None selected: every model.",
            "keys.rpm": "Requests per minute",
            "keys.concurrent_posts": "Concurrent posts",
            "keys.daily_images": "Images per day",
            "keys.expires": "Expires",
            "keys.revoke": "Revoke",
            "keys.revoked": "revoked",
            "keys.confirm_revoke": "Revoke this key? Programs using it stop working at once.",
            "keys.created_once": "Your new key. Copy it now: it is shown only once.",
            "keys.blank_unlimited": "Leave blank for no limit.",
        },
        "zh": {
            "app.tagline": "一句话进，一篇图文出",
            "nav.overview": "概览",
            "nav.keys": "API 密钥",
            "nav.providers": "服务商与模型",
            "nav.posts": "图文",
            "nav.images": "图片与缓存",
            "nav.logs": "日志",
            "nav.usage": "用量",
            "nav.password": "修改密码",
            "nav.sign_out": "退出登录",
            "nav.signed_in_as": "当前用户：{name}",
            "lang.switch": "English",
            "common.save": "保存",
            "common.cancel": "取消",
            "common.delete": "删除",
            "common.edit": "编辑",
            "common.create": "创建",
            "common.close": "关闭",
            "common.search": "搜索",
            "common.filter": "筛选",
            "common.all": "全部",
            "common.none": "无",
            "common.unlimited": "不限",
            "common.never": "从未",
            "common.yes": "是",
            "common.no": "否",
            "common.loading": "加载中…",
            "common.saved": "已保存。",
            "common.error": "出错了",
            "common.confirm_delete": "确定删除？此操作无法撤销。",
            "common.copy": "复制",
            "common.copied": "已复制",
            "common.previous": "上一页",
            "common.next": "下一页",
            "common.page_of": "第 {page} / {pages} 页",
            "common.empty": "暂无内容。",
            "common.actions": "操作",
            "common.name": "名称",
            "common.status": "状态",
            "common.created": "创建时间",
            "common.time": "时间",
            "common.model": "模型",
            "common.refresh": "刷新",
            "login.title": "登录",
            "login.username": "用户名",
            "login.password": "密码",
            "login.submit": "登录",
            "login.signed_out": "已退出登录。",
            "login.expired": "登录已过期，请重新登录。",
            "setup.title": "创建第一个管理员",
            "setup.intro": "输入 InkGate 启动时打印的初始化令牌（或 INKGATE_MASTER_KEY），并设置管理员的用户名和密码。",
            "setup.token": "初始化令牌",
            "setup.password_repeat": "再次输入密码",
            "setup.submit": "创建管理员",
            "setup.mismatch": "两次输入的密码不一致。",
            "setup.done": "管理员已存在，请直接登录。",
            "password.title": "修改密码",
            "password.current": "当前密码",
            "password.new": "新密码",
            "password.repeat": "再次输入新密码",
            "password.hint": "至少 10 个字符。修改后其他会话将退出登录。",
            "password.changed": "密码已修改，其他会话已退出登录。",
            "overview.title": "概览",
            "overview.today": "今日（UTC）",
            "overview.requests": "请求数",
            "overview.posts": "图文数",
            "overview.images": "新增图片",
            "overview.failures": "失败（5xx）",
            "overview.client_errors": "客户端错误（4xx）",
            "overview.storage": "存储",
            "overview.local_bytes": "本地磁盘",
            "overview.remote_bytes": "存储桶",
            "overview.pending": "待上传",
            "overview.failed_uploads": "上传失败",
            "overview.providers": "服务商",
            "overview.health": "健康状态",
            "overview.check": "立即检测",
            "overview.checking": "检测中…",
            "overview.connect": "接入",
            "overview.connect_text": "OpenAI 接口地址：{url}。OpenWebUI：设置 → 外部连接 → OpenAI API。",
            "overview.models": "模型",
            "keys.title": "API 密钥",
            "keys.new": "新建密钥",
            "keys.prefix": "密钥",
            "keys.last_used": "最近使用",
            "keys.today": "今日",
            "keys.requests_images": "{requests} 次请求 · {images} 张图",
            "keys.limits": "限制",
            "keys.allowed_models": "可用模型",
            "keys.allowed_models_hint": "不选表示全部模型。",
            "keys.rpm": "每分钟请求数",
            "keys.concurrent_posts": "同时生成的图文数",
            "keys.daily_images": "每日图片数",
            "keys.expires": "过期时间",
            "keys.revoke": "吊销",
            "keys.revoked": "已吊销",
            "keys.confirm_revoke": "确定吊销此密钥？使用它的程序将立即无法访问。",
            "keys.created_once": "新密钥如下。请立即复制：它只显示这一次。",
            "keys.blank_unlimited": "留空表示不限。",
        },
    }
)
