"""Placeholder protection: what no translation may change.

Order and tracking numbers, SKUs, amounts with a currency, URLs, e-mail addresses and the
glossary's brand and product names are replaced by numbered tokens (``{1}``, ``{2}``...)
before a translation engine sees the text, and put back afterwards. A translation that
drops, duplicates or invents a token is rejected.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_CURRENCY_SYMBOLS = r"(?:US\$|R\$|C\$|A\$|HK\$|\$|€|£|¥|￥|₩|₽|₹|CHF|EUR|USD|GBP|JPY|KRW|CNY|RMB|BRL|AED|SAR|RUB|元|円|원|руб\.?|د\.إ)"
_AMOUNT = r"\d{1,3}(?:[.,\u00a0\u202f ]\d{3})*(?:[.,]\d{1,2})?|\d+(?:[.,]\d{1,2})?"

# Order matters: earlier kinds win where matches overlap.
_PATTERNS: tuple[tuple[str, str], ...] = (
    (
        "url",
        r"\bhttps?://[^\s<>\"'）)]+[^\s<>\"'）).,;:!?。，、！？]|\bwww\.[^\s<>\"']+[^\s<>\"'.,;:!?。，]",
    ),
    ("email", r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"),
    ("order", r"#\s?\d{4,}|\b(?:ORD|ORDER|INV|RMA|MG)-\d{2,}(?:-\d+)*\b"),
    ("tracking", r"\b1Z[0-9A-Z]{16}\b|\b[A-Z]{2}\d{9}[A-Z]{2}\b|\bJJD\d{10,}\b|\b\d{12,22}\b"),
    ("price", rf"{_CURRENCY_SYMBOLS}\s?(?:{_AMOUNT})|(?:{_AMOUNT})\s?{_CURRENCY_SYMBOLS}"),
    ("sku", r"\b\d{3,6}-[A-Z0-9]{1,4}\b|\b[A-Z]{2,5}-\d{3,6}(?:-[A-Z0-9]{1,4})?\b"),
)

TOKEN = re.compile(r"[\{\[【<]\s*(\d{1,2})\s*[\}\]】>]")


@dataclass(frozen=True)
class Span:
    kind: str
    text: str


@dataclass(frozen=True)
class Masked:
    """Text with protected spans replaced by ``{n}`` tokens (1-based)."""

    text: str
    spans: tuple[Span, ...]

    @property
    def placeholders(self) -> list[str]:
        return [s.text for s in self.spans]


class Masker:
    def __init__(self, glossary: Iterable[str] = ()) -> None:
        terms = sorted({t for t in glossary if t}, key=len, reverse=True)
        patterns = list(_PATTERNS)
        if terms:
            alternatives = "|".join(re.escape(t) for t in terms)
            patterns.append(("term", rf"(?<![\w]){alternatives}(?![\w])"))
        self._regex = re.compile("|".join(f"(?P<{kind}>{pattern})" for kind, pattern in patterns))

    def find(self, text: str) -> list[Span]:
        return [Span(m.lastgroup or "?", m.group()) for m in self._regex.finditer(text)]

    def mask(self, text: str) -> Masked:
        spans: list[Span] = []

        def replace(match: re.Match[str]) -> str:
            spans.append(Span(match.lastgroup or "?", match.group()))
            return "{" + str(len(spans)) + "}"

        return Masked(self._regex.sub(replace, text), tuple(spans))

    def strip(self, text: str) -> str:
        """The text without protected spans (for language detection)."""
        return self._regex.sub(" ", text)


def unmask(translated: str, masked: Masked, *, render: dict[int, str] | None = None) -> str:
    """Put the spans back; raise ValueError if any token is missing, repeated or unknown.

    ``render`` may give a replacement per token (e.g. an amount re-formatted for the
    target locale) instead of the original text.
    """
    seen: list[int] = []

    def replace(match: re.Match[str]) -> str:
        n = int(match.group(1))
        if not 1 <= n <= len(masked.spans):
            raise ValueError(f"unknown placeholder {match.group()!r}")
        seen.append(n)
        if render and n in render:
            return render[n]
        return masked.spans[n - 1].text

    restored = TOKEN.sub(replace, translated)
    expected = list(range(1, len(masked.spans) + 1))
    if sorted(seen) != expected:
        missing = sorted(set(expected) - set(seen))
        repeated = sorted({n for n in seen if seen.count(n) > 1})
        raise ValueError(f"placeholders missing {missing} or repeated {repeated}")
    return restored
