"""Reply generation from the retrieved FAQ passages.

The prompt carries only the retrieved FAQ passages and the recent conversation. The reply
cites FAQ ids in square brackets, which never reach the customer: ``CitationFilter`` holds
back anything from ``[`` until it is known not to be a citation. Whether the reply may be
shown is decided by the faithfulness gate (bot/faithful.py), sentence by sentence, which the
caller passes as ``on_delta``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bot.llm import LLMClient, Message, OnDelta

_CITATION = re.compile(r"\s*\[([a-z]+\.[a-z0-9_-]+)\]")

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
    text: str  # rendered for the customer's market, in the reply's language


@dataclass
class GroundedReply:
    text: str  # citations removed
    raw: str
    faq_ids: list[str]  # the cited ids, else the first passage's
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
    """Ask the model for a reply from the passages. Raises LLMError on engine failure.

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
    return GroundedReply(
        text=text, raw=completion.text, faq_ids=cited or known[:1], usage=completion.usage()
    )
