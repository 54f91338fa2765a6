"""The chat answer of a post: markdown built from flow events.

The outline comes first as a numbered list, then one image per page in page
order (a page is shown as soon as it and every page before it are finished),
short progress lines while waiting, and at the end the failed pages and a ZIP
link. Progress lines are only for streamed answers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.flow.outline import OutlinePage
from gateway.flow.runner import FlowEvent

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")

TEXT = {
    "zh": {
        "outline_wait": "⏳ 正在构思大纲…",
        "outline": "**大纲**（共 {n} 页）",
        "cover_wait": "⏳ 正在生成封面…",
        "rest_wait": "⏳ 封面完成，正在生成其余 {n} 页…",
        "page": "第{n}页",
        "page_failed": "⚠️ 第{n}页生成失败：{reason}",
        "failed": "⚠️ 未能生成的页面：{pages}。可稍后重试这些页面。",
        "zip": "📦 [下载全部图片（ZIP）]({url})",
        "done": "✅ 完成：{done}/{total} 页",
        "types": {"cover": "封面", "content": "内容", "summary": "总结"},
        "sep": "、",
    },
    "en": {
        "outline_wait": "⏳ Writing the outline…",
        "outline": "**Outline** ({n} pages)",
        "cover_wait": "⏳ Drawing the cover…",
        "rest_wait": "⏳ Cover done, drawing the other {n} pages…",
        "page": "Page {n}",
        "page_failed": "⚠️ Page {n} failed: {reason}",
        "failed": "⚠️ Pages not generated: {pages}. You can retry them later.",
        "zip": "📦 [Download all images (ZIP)]({url})",
        "done": "✅ Done: {done}/{total} pages",
        "types": {"cover": "Cover", "content": "Content", "summary": "Summary"},
        "sep": ", ",
    },
}


def language_of(text: str) -> str:
    return "zh" if _CJK.search(text) else "en"


def _alt(text: str) -> str:
    return re.sub(r"[\[\]\(\)\n\r!]", " ", text).strip()[:60]


def outline_markdown(pages: list[OutlinePage], lang: str) -> str:
    t = TEXT[lang]
    lines = [t["outline"].format(n=len(pages)), ""]
    for page in pages:
        kind = t["types"].get(page.type, page.type)
        lines.append(f"{page.index + 1}. **[{kind}] {_alt(page.title) or kind}**")
        body = " · ".join(ln.strip(" -*#•") for ln in page.body.splitlines() if ln.strip(" -*#•"))
        if body:
            lines.append(f"   {body[:160]}{'…' if len(body) > 160 else ''}")
    return "\n".join(lines)


@dataclass
class Piece:
    text: str
    progress: bool = False


@dataclass
class PostMarkdown:
    """Turns flow events into markdown pieces, keeping images in page order."""

    lang: str
    image_url: Callable[[str, str], str]
    download_url: str
    outline_only: bool = False
    pages: list[OutlinePage] = field(default_factory=list)
    _next: int = 0
    _ready: dict[int, Piece] = field(default_factory=dict)
    _failed: dict[int, str] = field(default_factory=dict)

    def start(self) -> list[Piece]:
        return [Piece(TEXT[self.lang]["outline_wait"] + "\n\n", progress=True)]

    def feed(self, event: FlowEvent) -> list[Piece]:
        t = TEXT[self.lang]
        if event.kind == "outline":
            self.pages = event.data["pages"]
            out = [Piece(outline_markdown(self.pages, self.lang) + "\n\n")]
            if not self.outline_only:
                out.append(Piece(t["cover_wait"] + "\n\n", progress=True))
            return out
        if event.kind in ("page_done", "page_failed"):
            index = event.page or 0
            if event.kind == "page_done":
                page = self.pages[index]
                label = t["page"].format(n=index + 1)
                url = self.image_url(event.data["image_id"], event.data["ext"])
                self._ready[index] = Piece(f"![{label} · {_alt(page.title)}]({url})\n\n")
            else:
                self._failed[index] = event.data["reason"]
                reason = _alt(event.data["reason"])[:120]
                self._ready[index] = Piece(
                    t["page_failed"].format(n=index + 1, reason=reason) + "\n\n"
                )
            out: list[Piece] = []
            while self._next in self._ready:
                out.append(self._ready.pop(self._next))
                self._next += 1
                if self._next == 1 and len(self.pages) > 1:
                    out.append(Piece(t["rest_wait"].format(n=len(self.pages) - 1) + "\n\n", True))
            return out
        if event.kind == "finished":
            out = []
            total = len(self.pages)
            if self._failed:
                names = t["sep"].join(t["page"].format(n=i + 1) for i in sorted(self._failed))
                out.append(Piece(t["failed"].format(pages=names) + "\n\n"))
            if total and event.data.get("status") != "draft":
                out.append(
                    Piece(t["done"].format(done=total - len(self._failed), total=total) + "\n\n")
                )
                if len(self._failed) < total:
                    out.append(Piece(t["zip"].format(url=self.download_url) + "\n"))
            return out
        return []
