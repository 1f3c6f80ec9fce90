"""Step 3: validate the instruction before the model sees it.

A prompt is refused (``PromptRejectedError``, exit code 5) when it is empty
after trimming, or when it needs more tokens than the model's text budget,
counted with the model's own tokenizer exactly as its pipeline will count
them (LongCat tokenizes quoted spans character by character, so Chinese text
to render costs one token per character). Quoted text is passed through
unchanged: it is what the model renders.

diffusers 0.42.1's LongCat quote splitter (``split_quotation``) protects
apostrophes inside words ("Don't", "cat's") with placeholders that are
prefixes of each other and restores them shortest-first, so a prompt with two
different such words comes out mangled ("Don't change the Don'tDon't face"),
which word depending on ``PYTHONHASHSEED``. :func:`split_quotation` here is a
correct replacement (one placeholder character that cannot collide), and
:func:`patch_diffusers_quote_splitter` installs it over the module-level
function both LongCat pipelines call.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from editflow.core.errors import PromptRejectedError

_WORD_INTERNAL_APOSTROPHE = re.compile(r"[a-zA-Z]+'[a-zA-Z]+")
DEFAULT_QUOTE_PAIRS: tuple[tuple[str, str], ...] = (("'", "'"), ('"', '"'), ("‘", "’"), ("“", "”"))
# Private-use code points: never produced by a keyboard, so never in a real prompt.
_PLACEHOLDERS = ("\ue000", "\ue001", "\ue002", "\ue003")


def _quote_pattern(quote_pairs: Sequence[tuple[str, str]]) -> str:
    return "|".join(
        re.escape(q1) + r"[^" + re.escape(q1 + q2) + r"]*?" + re.escape(q2)
        for q1, q2 in quote_pairs
    )


def split_quotation(
    prompt: str, quote_pairs: Sequence[tuple[str, str]] | None = None
) -> list[tuple[str, bool]]:
    """Split ``prompt`` into ``(text, is_quoted)`` parts, keeping in-word apostrophes.

    Same contract as diffusers' function (quoted parts include their quotes),
    without its placeholder collisions: every in-word apostrophe becomes one
    private-use character for the split and is restored afterwards.
    """
    placeholder = next(p for p in _PLACEHOLDERS if p not in prompt)
    protected = _WORD_INTERNAL_APOSTROPHE.sub(
        lambda m: m.group(0).replace("'", placeholder), prompt
    )
    pattern = _quote_pattern(quote_pairs or DEFAULT_QUOTE_PAIRS)
    return [
        (part.replace(placeholder, "'"), re.fullmatch(pattern, part) is not None)
        for part in re.split(f"({pattern})", protected)
        if part
    ]


def patch_diffusers_quote_splitter() -> None:
    """Replace diffusers' buggy ``split_quotation`` in every LongCat pipeline module."""
    import importlib

    for name in (
        "diffusers.pipelines.longcat_image.pipeline_longcat_image",
        "diffusers.pipelines.longcat_image.pipeline_longcat_image_edit",
    ):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "split_quotation"):
            module.split_quotation = split_quotation


class Tokenizer(Protocol):
    def __call__(self, text: str, add_special_tokens: bool = ...) -> Any: ...


@dataclass(frozen=True)
class PromptRules:
    """How a model counts and limits its prompt (declared per registry entry)."""

    max_tokens: int
    #: Which pipeline component counts the tokens ("tokenizer", "tokenizer_2"...).
    tokenizer: str = "tokenizer"
    #: LongCat: quoted spans are tokenized one character at a time.
    quote_aware: bool = False
    #: Tokens the pipeline adds around the prompt inside the same budget (BOS/EOS).
    reserved_tokens: int = 0
    max_chars: int = 2000


def count_tokens(prompt: str, tokenizer: Tokenizer, rules: PromptRules) -> int:
    """Tokens ``prompt`` costs in the model's text budget, counted like its pipeline does."""

    def ids(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    if not rules.quote_aware:
        return len(ids(prompt)) + rules.reserved_tokens
    total = rules.reserved_tokens
    for part, quoted in split_quotation(prompt):
        if quoted:
            total += sum(len(ids(char)) for char in part)
        else:
            total += len(ids(part))
    return total


def normalize_prompt(prompt: str) -> str:
    """NFC, control characters (other than newline/tab) removed, outer whitespace trimmed."""
    text = unicodedata.normalize("NFC", prompt)
    text = "".join(c for c in text if c in "\n\t" or not unicodedata.category(c).startswith("C"))
    return text.strip()


def validate_prompt(prompt: str, tokenizer: Tokenizer | None, rules: PromptRules) -> str:
    """The prompt to send to the model, or one :class:`PromptRejectedError` saying what to fix."""
    text = normalize_prompt(prompt)
    if not text:
        raise PromptRejectedError("the instruction is empty: describe the edit", field="prompt")
    if len(text) > rules.max_chars:
        raise PromptRejectedError(
            f"the instruction is {len(text)} characters long; the limit is {rules.max_chars}",
            field="prompt",
        )
    if tokenizer is not None:
        used = count_tokens(text, tokenizer, rules)
        if used > rules.max_tokens:
            extra = " (text in quotes counts one token per character)" if rules.quote_aware else ""
            raise PromptRejectedError(
                f"the instruction is too long: {used} tokens, the model reads at most "
                f"{rules.max_tokens}{extra}. Shorten it to one concrete edit",
                field="prompt",
            )
    return text
