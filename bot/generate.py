"""Grounded reply generation in the pivot language.

The prompt carries only the retrieved FAQ passages and the recent conversation. The reply
cites FAQ ids in square brackets; the grounding check rejects a reply that states a number,
amount, duration or percentage found neither in the passages nor in the customer's words,
and the caller then falls back to the retrieved answer itself.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.llm import LLMClient, Message, OnDelta

_CITATION = re.compile(r"\s*\[([a-z]+\.[a-z0-9_-]+)\]")
# Numbers as people write them: 1,299.00  49.90  30  3-5  14  2%
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_WORD_NUMBERS = {
    "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "fourteen": "14",
    "fifteen": "15", "twenty": "20", "thirty": "30", "sixty": "60", "ninety": "90",
}  # fmt: skip
_WORD_NUMBER = re.compile(r"\b(" + "|".join(_WORD_NUMBERS) + r")\b", re.I)

SYSTEM_PROMPT = """You are the customer-service assistant of the online shop {shop}.
Answer the customer's last message using ONLY the facts in the FAQ passages below.
- {language}
- Be brief: at most three sentences, friendly and concrete.
- Never invent numbers, prices, durations, policies, links or order details.
- End each sentence that uses a passage with its id in square brackets, e.g. [returns.policy].
- If the passages do not answer the question, say that a colleague from the support team
  can help, and nothing else.

FAQ passages:
{passages}"""


@dataclass(frozen=True)
class Passage:
    faq_id: str
    text: str  # rendered for the customer's market, in the pivot language


@dataclass
class GroundedReply:
    text: str  # citations removed
    raw: str
    faq_ids: list[str]
    grounded: bool
    unsupported: list[str] = field(default_factory=list)
    usage: dict[str, Any] | None = None


def build_messages(
    shop: str,
    passages: Sequence[Passage],
    question: str,
    history: Sequence[tuple[str, str]] = (),
    *,
    language: str = "English",
    register: str | None = None,
) -> list[Message]:
    block = "\n\n".join(f"[{p.faq_id}]\n{p.text}" for p in passages)
    instruction = f"Write the reply in {language}"
    instruction += f", addressing the customer with {register}." if register else "."
    system = SYSTEM_PROMPT.format(shop=shop, passages=block, language=instruction)
    messages: list[Message] = [{"role": "system", "content": system}]
    for role, text in history[-4:]:
        messages.append({"role": "assistant" if role != "customer" else "user", "content": text})
    messages.append({"role": "user", "content": question})
    return messages


def numbers_in(text: str) -> set[str]:
    """Canonical numbers mentioned in ``text`` ("1,299.00" -> "1299", "thirty" -> "30")."""
    text = _WORD_NUMBER.sub(lambda m: _WORD_NUMBERS[m.group(1).lower()], text)
    out = set()
    for raw in _NUMBER.findall(text):
        digits = re.sub(r"[.,]\d{1,2}$", "", raw) if re.search(r"[.,]\d{1,2}$", raw) else raw
        digits = digits.replace(",", "").replace(".", "")
        out.add(digits.lstrip("0") or "0")
    return out


def grounding_problems(reply: str, passages: Sequence[Passage], question: str) -> list[str]:
    """Numbers in ``reply`` that no passage and not the question contains."""
    allowed = numbers_in(question)
    for p in passages:
        allowed |= numbers_in(p.text)
    return sorted(numbers_in(reply) - allowed)


def split_citations(raw: str, known: Sequence[str]) -> tuple[str, list[str]]:
    cited = [c for c in dict.fromkeys(_CITATION.findall(raw)) if c in known]
    text = _CITATION.sub("", raw).strip()
    text = re.sub(r"\s+([.,!?])", r"\1", text)
    return text, cited


class CitationFilter:
    """Streams text on, holding back anything from ``[`` until it is known not to be a
    citation (citations are shown as FAQ links, not as text)."""

    def __init__(self, on_delta: OnDelta) -> None:
        self._on_delta = on_delta
        self._held = ""

    async def feed(self, piece: str) -> None:
        text = self._held + piece
        cut = text.rfind("[")
        if cut >= 0 and "]" not in text[cut:] and len(text) - cut <= 40:
            text, self._held = text[:cut], text[cut:]
        else:
            self._held = ""
        text = _CITATION.sub("", text)
        if text:
            await self._on_delta(text)

    async def flush(self) -> None:
        if self._held:
            held, self._held = _CITATION.sub("", self._held), ""
            if held:
                await self._on_delta(held)


async def generate_reply(
    llm: LLMClient,
    *,
    shop: str,
    passages: Sequence[Passage],
    question: str,
    history: Sequence[tuple[str, str]] = (),
    max_tokens: int = 220,
    temperature: float = 0.1,
    on_delta: OnDelta | None = None,
    language: str = "English",
    register: str | None = None,
) -> GroundedReply:
    """Ask the model for a grounded reply and check it. Raises LLMError on engine failure.

    Streamed pieces reach ``on_delta`` with the ``[faq.id]`` citations already removed.
    """
    messages = build_messages(
        shop, passages, question, history, language=language, register=register
    )
    stream = CitationFilter(on_delta) if on_delta is not None else None
    completion = await llm.chat(
        messages,
        max_tokens=max_tokens,
        temperature=temperature,
        on_delta=stream.feed if stream else None,
    )
    if stream:
        await stream.flush()
    known = [p.faq_id for p in passages]
    text, cited = split_citations(completion.text, known)
    unsupported = grounding_problems(text, passages, question)
    grounded = bool(text) and not unsupported
    return GroundedReply(
        text=text,
        raw=completion.text,
        faq_ids=cited or known[:1],
        grounded=grounded,
        unsupported=unsupported,
        usage=completion.usage(),
    )
