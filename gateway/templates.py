"""The prompt-template catalogue: concrete "action + object + result" instructions, bilingual.

The model edits well from one concrete instruction and badly from abstract
or multi-step ones (brief §4), so OA forms offer these as dropdowns. Text to
render goes in quotes (LongCat renders quoted text verbatim, one token per
Chinese character), with font and colour named. Rendering is a pure function:
:func:`render` checks every parameter (missing, unknown, empty, breaking out
of its quotes) and names the field that is wrong.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from typing import Literal

from editflow.core.errors import InvalidInputError

Lang = Literal["zh", "en"]
LANGS: tuple[Lang, ...] = ("zh", "en")

#: Longest parameter value (the approval event allows 500; a prompt needs far less).
MAX_PARAM_CHARS = 200


@dataclass(frozen=True)
class Param:
    name: str
    label: dict[str, str]
    example: dict[str, str]
    quoted: bool = False  # rendered inside quotes: the value may not contain quote marks


@dataclass(frozen=True)
class PromptTemplate:
    id: str
    title: dict[str, str]
    text: dict[str, str]
    params: tuple[Param, ...] = field(default_factory=tuple)

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "title": self.title,
            "text": self.text,
            "params": [
                {"name": p.name, "label": p.label, "example": p.example, "quoted": p.quoted}
                for p in self.params
            ],
        }


def _p(name: str, en: str, zh: str, ex_en: str, ex_zh: str, *, quoted: bool = False) -> Param:
    return Param(name, {"en": en, "zh": zh}, {"en": ex_en, "zh": ex_zh}, quoted)


CATALOGUE: tuple[PromptTemplate, ...] = (
    PromptTemplate(
        "replace-background",
        {"en": "Replace the background", "zh": "更换背景"},
        {"en": "Replace the background with {scene}", "zh": "把背景换成{scene}"},
        (_p("scene", "scene", "场景", "a beach at sunset", "海边日落"),),
    ),
    PromptTemplate(
        "change-colour",
        {"en": "Change an object's colour", "zh": "更改物体颜色"},
        {
            "en": "Change the colour of the {object} to {colour}",
            "zh": "把{object}的颜色改成{colour}",
        },
        (
            _p("object", "object", "物体", "handbag", "手提包"),
            _p("colour", "colour", "颜色", "navy blue", "藏青色"),
        ),
    ),
    PromptTemplate(
        "add-text",
        {"en": "Add text", "zh": "添加文字"},
        {
            "en": 'Add the text "{text}" at the {position} in {font}, {colour}',
            "zh": "在{position}添加文字“{text}”，字体为{font}，颜色为{colour}",
        },
        (
            _p("text", "text", "文字", "Summer Sale", "夏日特惠", quoted=True),
            _p("position", "position", "位置", "top centre", "顶部居中"),
            _p("font", "font", "字体", "bold sans-serif", "黑体"),
            _p("colour", "colour", "颜色", "white", "白色"),
        ),
    ),
    PromptTemplate(
        "replace-text",
        {"en": "Replace text", "zh": "替换文字"},
        {
            "en": 'Replace the text "{old}" with "{new}", keeping its font and colour',
            "zh": "把文字“{old}”改成“{new}”，保持原有字体和颜色",
        },
        (
            _p("old", "current text", "原文字", "Spring Sale", "春季特惠", quoted=True),
            _p("new", "new text", "新文字", "Summer Sale", "夏日特惠", quoted=True),
        ),
    ),
    PromptTemplate(
        "remove-watermark",
        {"en": "Remove the watermark", "zh": "去除水印"},
        {"en": "Remove the watermark", "zh": "去掉图片上的水印"},
    ),
    PromptTemplate(
        "remove-object",
        {"en": "Remove an object", "zh": "移除物体"},
        {"en": "Remove the {object}", "zh": "去掉{object}"},
        (_p("object", "object", "物体", "person on the left", "左边的行人"),),
    ),
    PromptTemplate(
        "replace-object",
        {"en": "Replace an object", "zh": "替换物体"},
        {"en": "Replace the {object} with {replacement}", "zh": "把{object}换成{replacement}"},
        (
            _p("object", "object", "物体", "coffee cup", "咖啡杯"),
            _p("replacement", "replacement", "替换为", "glass of orange juice", "一杯橙汁"),
        ),
    ),
    PromptTemplate(
        "change-season",
        {"en": "Change the season", "zh": "更换季节"},
        {"en": "Change the season to {season}", "zh": "把季节改成{season}"},
        (_p("season", "season", "季节", "winter with snow", "下雪的冬天"),),
    ),
)

BY_ID: dict[str, PromptTemplate] = {t.id: t for t in CATALOGUE}

_QUOTES = re.compile(r"[\"'“”‘’「」『』]")


def placeholders(text: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(text) if name]


def render(template_id: str, params: dict[str, str], lang: Lang = "zh") -> str:
    """The instruction ``template_id`` makes with ``params`` in ``lang``.

    Raises :class:`InvalidInputError` naming ``template.id`` or
    ``template.params.<name>``; every problem is reported, the first in the
    message and all of them in ``errors`` of the caller's problem document.
    """
    template = BY_ID.get(template_id)
    if template is None:
        raise InvalidInputError(
            f"unknown template {template_id!r}; GET /v1/templates lists them", field="template.id"
        )
    declared = {p.name: p for p in template.params}
    for name in params:
        if name not in declared:
            expected = ", ".join(declared) or "none"
            raise InvalidInputError(
                f"template {template_id!r} has no parameter {name!r} (expected: {expected})",
                field=f"template.params.{name}",
            )
    values: dict[str, str] = {}
    for name, param in declared.items():
        value = (params.get(name) or "").strip()
        where = f"template.params.{name}"
        if not value:
            raise InvalidInputError(
                f"template {template_id!r} needs {name!r}, e.g. {param.example[lang]!r}",
                field=where,
            )
        if len(value) > MAX_PARAM_CHARS:
            raise InvalidInputError(f"at most {MAX_PARAM_CHARS} characters", field=where)
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise InvalidInputError("must not contain control characters", field=where)
        if param.quoted and _QUOTES.search(value):
            raise InvalidInputError(
                "the text to render must not contain quote marks (it is quoted for the model)",
                field=where,
            )
        values[name] = value
    # str.format substitutes once: braces inside a value are never re-read as placeholders.
    return template.text[lang].format_map(values)


#: OA usages and what they produce (the worker's output profiles; unknown usages get PNG).
USAGES: tuple[tuple[str, dict[str, str]], ...] = (
    ("default", {"en": "General (PNG)", "zh": "通用（PNG）"}),
    ("wechat-article", {"en": "WeChat article", "zh": "公众号文章"}),
    ("mini-program", {"en": "Mini-program (750 px)", "zh": "小程序（750 像素）"}),
    ("display-board", {"en": "Offline display board", "zh": "线下展板"}),
    ("poster", {"en": "Poster", "zh": "海报"}),
    ("web-banner", {"en": "Web banner", "zh": "网页横幅"}),
    ("e-commerce", {"en": "E-commerce listing", "zh": "电商商品图"}),
)
