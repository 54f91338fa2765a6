"""Changing a post's pages: chat edits applied to the page list, and saving a list.

Both the REST API (`PATCH /v1/posts/{id}`) and chat commands ("第2页改成…") end in
`save_pages`: the post's pages are replaced in one transaction, so a reorder never
trips over the unique (post, index) pair and a reader never sees half an edit.
A page whose text changed, or that is to be drawn again, is `pending`; its old
image stays until the new one is stored (nothing is lost if the redraw fails).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime

from sqlalchemy import delete, insert, update

from gateway.flow.commands import Edit
from gateway.flow.outline import OutlinePage, outline_text
from storage.db import Database
from storage.tables import Page, Post

# ops that draw something (the others only change the outline)
DRAWING_OPS = {"regenerate", "retry", "edit", "cover", "add", "generate"}


@dataclass(frozen=True)
class PageDraft:
    type: str
    text: str
    status: str = "pending"
    image_id: str | None = None
    error: str | None = None
    attempts: int = 0

    @classmethod
    def of(cls, page: Page) -> PageDraft:
        return cls(page.type, page.text, page.status, page.image_id, page.error, page.attempts)

    def redraw(self, text: str | None = None) -> PageDraft:
        return replace(self, text=text if text is not None else self.text, status="pending",
                       error=None)  # fmt: skip


def default_type(index: int, count: int) -> str:
    if index == 0:
        return "cover"
    return "summary" if index == count - 1 and count > 2 else "content"


def status_of(pages: list[PageDraft] | list[Page]) -> str:
    """A post's status from its pages, when no job runs."""
    done = sum(1 for p in pages if p.status == "done")
    failed = sum(1 for p in pages if p.status == "failed")
    if pages and done == len(pages):
        return "completed"
    if done:
        return "partial"
    return "failed" if failed else "draft"


def apply_edits(pages: list[PageDraft], edits: list[Edit], *, draw: bool) -> list[PageDraft]:
    """The page list after `edits` (1-based page numbers, applied in order).

    `draw`: edited and added pages are to be drawn (a drawn post); False for an
    outline still being planned, where only the text changes. Raises ValueError
    with a message for the user when an edit does not fit the pages.
    """
    out = list(pages)

    def at(number: int | None) -> int:
        if number is None or not 1 <= number <= len(out):
            raise ValueError(f"There is no page {number} (the post has {len(out)} pages)")
        return number - 1

    def mark(page: PageDraft, text: str | None = None) -> PageDraft:
        if draw:
            return page.redraw(text)
        return replace(page, text=text) if text is not None else page

    for edit in edits:
        if edit.op in ("regenerate", "cover"):
            i = 0 if edit.op == "cover" else at(edit.page)
            out[i] = out[i].redraw()
        elif edit.op == "retry":
            out = [p.redraw() if p.status == "failed" else p for p in out]
        elif edit.op == "generate":
            out = [p if p.status == "done" else p.redraw() for p in out]
        elif edit.op == "edit":
            i = at(edit.page)
            out[i] = mark(out[i], (edit.text or "").strip() or out[i].text)
        elif edit.op == "add":
            text = (edit.text or "").strip()
            if not text:
                raise ValueError("A new page needs its text")
            if edit.page is None:
                position = len(out) - 1 if out and out[-1].type == "summary" else len(out)
            elif 1 <= edit.page <= len(out) + 1:
                position = edit.page - 1
            else:
                raise ValueError(f"A page cannot be added at position {edit.page}")
            out.insert(position, PageDraft("content", text))
        elif edit.op == "delete":
            if len(out) == 1:
                raise ValueError("The post's only page cannot be deleted")
            out.pop(at(edit.page))
        elif edit.op == "move":
            page = out.pop(at(edit.page))
            to = edit.to if edit.to is not None else 0
            if not 1 <= to <= len(out) + 1:
                raise ValueError(f"There is no page {to} to move to")
            out.insert(to - 1, page)
    # the first page is the cover; a moved cover becomes content
    return [
        replace(p, type="cover")
        if i == 0
        else (replace(p, type="content") if p.type == "cover" else p)
        for i, p in enumerate(out)
    ]


async def save_pages(
    db: Database, post_id: str, pages: list[PageDraft] | None, *, topic: str | None = None
) -> None:
    """Replace the post's pages (and set its topic) in one transaction."""
    pages_table, posts_table = Page.__table__, Post.__table__
    now = datetime.now(UTC)
    values: dict = {"updated_at": now}
    if topic is not None:
        values["topic"] = topic
    async with db.writing(), db.engine.begin() as conn:
        if pages is not None:
            await conn.execute(delete(pages_table).where(pages_table.c.post_id == post_id))
            await conn.execute(
                insert(pages_table),
                [
                    {
                        "post_id": post_id,
                        "page_index": i,
                        "type": p.type,
                        "text": p.text,
                        "status": p.status,
                        "image_id": p.image_id,
                        "error": p.error,
                        "attempts": p.attempts,
                        "updated_at": now,
                    }
                    for i, p in enumerate(pages)
                ],
            )
            values["status"] = status_of(pages)
            values["page_count"] = len(pages)
            values["outline"] = outline_text(
                [OutlinePage(i, p.type, p.text) for i, p in enumerate(pages)]
            )
        await conn.execute(update(posts_table).where(posts_table.c.id == post_id).values(values))
