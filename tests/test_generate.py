"""Model replies: citations become FAQ links, never text the customer reads."""

from __future__ import annotations

import pytest

from bot.generate import CitationFilter, Passage, build_messages, split_citations


async def _stream(pieces: list[str]) -> str:
    shown: list[str] = []

    async def on_delta(text: str) -> None:
        shown.append(text)

    citations = CitationFilter(on_delta)
    for piece in pieces:
        await citations.feed(piece)
    await citations.flush()
    return "".join(shown)


@pytest.mark.parametrize(
    "pieces",
    [
        ["You can return items within 30 days ", "[returns.policy]", "."],
        ["You can return items within 30 days [ret", "urns.pol", "icy]."],
        ["You can return items within 30 days [", "returns.policy] ."],
    ],
)
async def test_citations_split_across_pieces_never_stream(pieces: list[str]) -> None:
    """However the engine cuts the stream, "[returns.policy]" never appears on screen."""
    shown = await _stream(pieces)
    assert "[" not in shown and "returns.policy" not in shown
    assert shown.startswith("You can return items within 30 days")


async def test_brackets_that_are_not_citations_are_shown() -> None:
    """A bracket the model writes for another reason ("[see below]") reaches the customer."""
    shown = await _stream(["Sizes run small [see the size chart] in most styles."])
    assert "[see the size chart]" in shown


def test_split_citations_keeps_only_known_ids() -> None:
    """Cited ids that were among the passages are kept, in order; the text is cleaned."""
    text, cited = split_citations(
        "Returns are free [returns.policy]. Refunds take 5 days [refunds.timing] [made.up].",
        ["returns.policy", "refunds.timing"],
    )
    assert cited == ["returns.policy", "refunds.timing"]
    assert text == "Returns are free. Refunds take 5 days."


def test_prompt_carries_passages_register_and_recent_history_only() -> None:
    """The model sees the passages, the language and register, and the last four turns."""
    history = [("customer", f"q{i}") for i in range(6)]
    messages = build_messages(
        "Meridian Goods", [Passage("returns.policy", "30 Tage")], "Frage?", history,
        language="German", register="Sie",
    )  # fmt: skip
    system = messages[0]["content"]
    assert "[returns.policy]\n30 Tage" in system
    assert "German" in system and "Sie" in system
    assert [m["content"] for m in messages[1:]] == ["q2", "q3", "q4", "q5", "Frage?"]
