"""The chat answer of a post: markdown built from flow events.

The outline comes first as a numbered list, then one image per page in page
order (a page is shown as soon as it and every page before it are finished),
short progress lines while waiting, and at the end the failed pages, the post
copy (titles, body, hashtags) and a ZIP link. Progress lines are only for streamed
answers. The answer starts with an invisible markdown link definition carrying the
post's id, so a conversation cut off mid-answer still names its post.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.flow.copy import PostCopy
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
        "pending": "📝 第{n}页：待生成",
        "plan_hint": "💡 可以继续修改大纲（如“第2页改成…”、“加一页…”、“删除第3页”），说“生成”开始绘制。",
        "edit_hint": "💡 还可以说：“重新生成第3页”、“第2页改成…”、“换个封面”、“加一页…”、“重试”。",
        "still": "⏳ 这篇笔记还在生成中，继续为你显示进度…",
        "drawing": "⏳ 正在绘制…",
        "page_ready": "✓ 第{n}页完成",
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
        "pending": "📝 Page {n}: not drawn yet",
        "plan_hint": '💡 Keep editing the outline ("page 2: …", "add a page: …", "delete page 3"), then say "generate" to draw it.',
        "edit_hint": '💡 You can also say: "regenerate page 3", "page 2: …", "new cover", "add a page: …", "retry".',
        "still": "⏳ This post is still being generated; here is its progress…",
        "drawing": "⏳ Drawing…",
        "page_ready": "✓ Page {n} done",
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
    post_id: str | None = None
    pages: list[OutlinePage] = field(default_factory=list)
    copy: PostCopy | None = None
    _next: int = 0
    _ready: dict[int, Piece] = field(default_factory=dict)
    _failed: dict[int, str] = field(default_factory=dict)
    _pending: set[int] = field(default_factory=set)

    def link(self) -> list[Piece]:
        """The post's id in an invisible link definition (shown by no renderer)."""
        return [Piece(f"[{self.post_id}]: {self.download_url}\n\n")] if self.post_id else []

    def start(self) -> list[Piece]:
        return [*self.link(), Piece(TEXT[self.lang]["outline_wait"] + "\n\n", progress=True)]

    def feed(self, event: FlowEvent) -> list[Piece]:
        t = TEXT[self.lang]
        if event.kind == "outline":
            self.pages = event.data["pages"]
            out = [Piece(outline_markdown(self.pages, self.lang) + "\n\n")]
            if not self.outline_only:
                out.append(Piece(t["cover_wait"] + "\n\n", progress=True))
            return out
        if event.kind == "copy":
            self.copy = PostCopy(**event.data)
            return []
        if event.kind in ("page_done", "page_failed", "page_pending"):
            index = event.page or 0
            if event.kind == "page_pending":
                self._pending.add(index)
                self._ready[index] = Piece(t["pending"].format(n=index + 1) + "\n\n")
            elif event.kind == "page_done":
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
            if event.data.get("status") == "draft" and self.outline_only:
                out.append(Piece(t["plan_hint"] + "\n"))
            drawn = total - len(self._failed) - len(self._pending)
            if total and event.data.get("status") != "draft":
                if self.copy is not None:
                    out.append(Piece(self.copy.markdown(self.lang) + "\n\n"))
                out.append(Piece(t["done"].format(done=drawn, total=total) + "\n\n"))
                if drawn:
                    out.append(Piece(t["zip"].format(url=self.download_url) + "\n"))
            return out
        return []


def replay(md: PostMarkdown, pages: list, images: dict[str, str], status: str) -> list[Piece]:
    """The whole post as it is now, through the same renderer as a live answer.

    `pages`: rows with page_index, type, text, status, image_id, error; `images`:
    image id -> file extension."""
    events = [
        FlowEvent(
            "outline",
            data={"pages": [OutlinePage(p.page_index, p.type, p.text) for p in pages]},
        )
    ]
    if not md.outline_only:
        for p in pages:
            if p.status == "done" and p.image_id in images:
                data = {"image_id": p.image_id, "ext": images[p.image_id]}
                events.append(FlowEvent("page_done", p.page_index, data))
            elif p.status == "failed":
                reason = p.error or "failed"
                events.append(FlowEvent("page_failed", p.page_index, {"reason": reason}))
            else:
                events.append(FlowEvent("page_pending", p.page_index))
    events.append(FlowEvent("finished", data={"status": status}))
    return [piece for e in events for piece in md.feed(e) if not piece.progress]
