"""The prompt-template catalogue: bilingual, concrete, and strict about its parameters."""

from __future__ import annotations

import pytest

from editflow.core.errors import InvalidInputError
from editflow.gateway import templates


def test_catalogue_has_the_briefs_templates_in_both_languages() -> None:
    ids = {t.id for t in templates.CATALOGUE}
    assert {"replace-background", "change-colour", "add-text", "remove-watermark"} <= ids
    for template in templates.CATALOGUE:
        assert set(template.title) == set(template.text) == {"zh", "en"}
        for lang in templates.LANGS:
            assert sorted(templates.placeholders(template.text[lang])) == sorted(
                p.name for p in template.params
            ), (template.id, lang)


@pytest.mark.parametrize("template", templates.CATALOGUE, ids=lambda t: t.id)
@pytest.mark.parametrize("lang", templates.LANGS)
def test_every_template_renders_its_examples(template: templates.PromptTemplate, lang: str) -> None:
    params = {p.name: p.example[lang] for p in template.params}
    text = templates.render(template.id, params, lang)  # type: ignore[arg-type]
    assert "{" not in text and "}" not in text
    for value in params.values():
        assert value in text


def test_text_to_render_is_quoted_with_font_and_colour() -> None:
    zh = templates.render(
        "add-text",
        {"text": "夏日特惠", "position": "顶部", "font": "黑体", "colour": "红色"},
        "zh",
    )
    assert zh == "在顶部添加文字“夏日特惠”，字体为黑体，颜色为红色"
    en = templates.render(
        "add-text", {"text": "Sale", "position": "top", "font": "serif", "colour": "red"}, "en"
    )
    assert en == 'Add the text "Sale" at the top in serif, red'


@pytest.mark.parametrize(
    ("template_id", "params", "field"),
    [
        ("no-such-template", {}, "template.id"),
        ("replace-background", {}, "template.params.scene"),
        ("replace-background", {"scene": "   "}, "template.params.scene"),
        ("replace-background", {"scene": "beach", "mood": "calm"}, "template.params.mood"),
        ("replace-background", {"scene": "a\nb"}, "template.params.scene"),
        ("replace-background", {"scene": "x" * 201}, "template.params.scene"),
        (
            "add-text",
            {"text": 'say "hi"', "position": "top", "font": "serif", "colour": "red"},
            "template.params.text",
        ),
    ],
)
def test_wrong_parameters_name_the_field(template_id: str, params: dict, field: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        templates.render(template_id, params, "en")
    assert caught.value.field == field


def test_braces_in_a_value_are_not_placeholders() -> None:
    text = templates.render("replace-background", {"scene": "{scene} {0}"}, "en")
    assert text == "Replace the background with {scene} {0}"
