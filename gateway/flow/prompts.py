"""The image prompt for one page."""

from __future__ import annotations

from gateway.flow.outline import OutlinePage

PAGE_TYPE_NAMES = {"cover": "封面", "content": "内容", "summary": "总结"}

STYLE_RULES = """\
设计要求：
1. 竖版 {aspect_ratio} 比例，高清，小红书爆款图文风格：清新、精致、有设计感，配色和谐。
2. 所有页面风格统一：同一套配色、字体、版式和装饰元素。{reference_rule}
3. 页面上的所有文字都要完整、清晰、可读、正向摆放，不要错字、乱码或倒置的文字；标题大而醒目，重点突出，留白合理。
4. 背景简洁但不单调，可以有与内容相关的插画、图标和 emoji 装饰。
5. 不要出现任何平台 logo、用户 ID、水印；如果参考图里有水印或 logo，去掉它们。
6. 不要手机边框或截图界面，画面就是图文本身。"""

COVER_REFERENCE_RULE = "第一张参考图是本篇的封面，严格沿用它的风格。"


def build_image_prompt(
    page: OutlinePage,
    *,
    topic: str,
    outline: str,
    aspect_ratio: str = "3:4",
    short: bool = False,
    has_cover_reference: bool = False,
) -> str:
    """The prompt for `page`. `short` sends only the page (for models with small limits)."""
    page_type = PAGE_TYPE_NAMES.get(page.type, "内容")
    if short:
        return f"小红书风格竖版 {aspect_ratio} 图文，{page_type}页，文字清晰可读：\n{page.text}"
    rules = STYLE_RULES.format(
        aspect_ratio=aspect_ratio,
        reference_rule=COVER_REFERENCE_RULE if has_cover_reference else "",
    )
    return (
        "请生成一张小红书风格的图文页面图片。\n\n"
        f"页面类型：{page_type}\n"
        f"页面内容：\n{page.text}\n\n"
        f"{rules}\n\n"
        f"用户的原始需求：{topic}\n\n"
        f"完整大纲（供参考，只画本页内容）：\n{outline}"
    )
