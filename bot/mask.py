"""Placeholder protection: what no translation may change.

Order and tracking numbers, SKUs, amounts with a currency, URLs, e-mail addresses and the
glossary's brand and product names are replaced by numbered tokens (``{1}``, ``{2}``...)
before a translation engine sees the text, and put back afterwards. A translation that
drops, duplicates or invents a token is rejected.

Order numbers come in two shapes: marked (``#48213``, ``ORD-2024-88123``) and bare, where
only the words before them say what they are ("meine Bestellung 48213", "订单号 48213",
"طلبي رقم 48213"): a 4-12 digit number at most two words after an order word of a launch
language. Only the number (as written) is the span; the words stay translatable.

Masking runs on every customer message, so it must take time linear in the text's length,
whatever the text (bench/bench_attack.py): a pattern may scan an unbounded run only from
the start of that run (``(?<!\\d)``, ``\\b``, a literal like ``#`` or ``http``); every
other repetition is bounded, so no start position costs more than a constant.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

_CURRENCY_SYMBOLS = r"(?:US\$|R\$|C\$|A\$|HK\$|\$|€|£|¥|￥|₩|₽|₹|CHF|EUR|USD|GBP|JPY|KRW|CNY|RMB|BRL|AED|SAR|RUB|元|円|원|руб\.?|د\.إ)"
# At most six thousands groups (10^21): an unbounded group would make "111 111 111 ..." cost
# the rest of the text from every digit run. (?!\d): "$1234" is one amount, not "$123".
_AMOUNT = r"(?:\d{1,3}(?:[.,\u00a0\u202f ]\d{3}){1,6}(?:[.,]\d{1,2})?|\d++(?:[.,]\d{1,2})?)(?!\d)"

# Order matters: earlier kinds win where matches overlap.
_PATTERNS: tuple[tuple[str, str], ...] = (
    (
        "url",
        r"\bhttps?://[^\s<>\"'）)]+[^\s<>\"'）).,;:!?。，、！？]|\bwww\.[^\s<>\"']+[^\s<>\"'.,;:!?。，]",
    ),
    # Local part at most 64 characters (RFC 5321), labels 63: "a.a.a.a..." has a word
    # boundary before every letter, and an unbounded local part scanned to the end from each.
    ("email", r"\b[\w.+-]{1,64}+@[\w-]{1,63}(?:\.[\w-]{1,63}){1,8}\b"),
    ("order", r"#\s?\d{4,}|\b(?:ORD|ORDER|INV|RMA|MG)-\d{2,}(?:-\d+)*\b"),
    ("tracking", r"\b1Z[0-9A-Z]{16}\b|\b[A-Z]{2}\d{9}[A-Z]{2}\b|\bJJD\d{10,}\b|\b\d{12,22}\b"),
    # The amount-first form starts only where a digit run starts: from inside "1111...",
    # "\d+" would rescan the rest of the run at every digit.
    ("price", rf"{_CURRENCY_SYMBOLS}\s?{_AMOUNT}|(?<!\d){_AMOUNT}\s?{_CURRENCY_SYMBOLS}"),
    ("sku", r"\b\d{3,6}-[A-Z0-9]{1,4}\b|\b[A-Z]{2,5}-\d{3,6}(?:-[A-Z0-9]{1,4})?\b"),
)

# Order words of the launch languages. Spaced scripts: whole words, any case.
_ORDER_WORDS = (
    "orders?|ordernummer|bestelling(?:en)?|bestelnummer"  # en, nl
    "|bestellung(?:en)?|bestellnummer|bestellnr|auftrag|auftrags(?:nummer|nr)"  # de
    "|pedidos?|orden|encomendas?"  # es, pt
    "|commandes?|ordin[ei]|ordinazion[ei]"  # fr, it
    "|заказ(?:а|у|ом|е|ы|ов|ам|ах)?"  # ru
)
# Unspaced scripts (and Arabic, whose order word takes prefixes and suffixes: الطلب, طلبي):
# anywhere, with up to four letters attached (订单号, 注文番号, 주문번호).
_ORDER_STEMS = "订单|訂單|注文|オーダー|주문|오더|طلب"
_GAP = r"[\s:：.,°º№\-–—]{0,4}+"  # "Nr.: ", "n° ", "：" ('#' belongs to the number)
_WORD = r"[^\W\d_]{1,20}+"  # letters only: "number", "Nr", "رقم", "번호는"
_ORDER_CONTEXT = re.compile(
    rf"(?:\b(?i:{_ORDER_WORDS})(?![^\W\d_])|(?:{_ORDER_STEMS})[^\W\d_]{{0,4}}+)"
    rf"(?:{_GAP}{_WORD}){{0,2}}{_GAP}"
    r"(?P<number>#\s?\d{4,12}|\d{4,12})(?!\d|[.,]\d)"
)

# Up to 4 digits: a 2,000-character message can hold hundreds of spans ("$1 $1 ...").
TOKEN = re.compile(r"[\{\[【<]\s*(\d{1,4})\s*[\}\]】>]")

_Found = tuple[int, int, str]  # start, end, kind


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


@dataclass(frozen=True)
class Scan:
    """A text and where its protected spans are, found in one pass (``Masker.scan``): a
    turn scans the customer's message once and every stage reads the spans from here."""

    text: str
    found: tuple[_Found, ...]

    @property
    def spans(self) -> list[Span]:
        return [Span(kind, self.text[start:end]) for start, end, kind in self.found]

    def masked(self) -> Masked:
        """The text with each span replaced by its ``{n}`` token."""
        masked = _replace(self.text, self.found, lambda n: "{" + str(n) + "}")
        return Masked(masked, tuple(self.spans))

    def stripped(self) -> str:
        """The text without its spans (for language detection and the lexicon)."""
        return _replace(self.text, self.found, lambda n: " ")


class Masker:
    def __init__(self, glossary: Iterable[str] = ()) -> None:
        terms = sorted({t for t in glossary if t}, key=len, reverse=True)
        patterns = list(_PATTERNS)
        if terms:
            alternatives = "|".join(re.escape(t) for t in terms)
            patterns.append(("term", rf"(?<![\w]){alternatives}(?![\w])"))
        self._regex = re.compile("|".join(f"(?P<{kind}>{pattern})" for kind, pattern in patterns))

    def scan(self, text: str) -> Scan:
        """The one pass over ``text`` that finds its protected spans."""
        found = [(m.start(), m.end(), m.lastgroup or "?") for m in self._regex.finditer(text)]
        numbers = [m.span("number") for m in _ORDER_CONTEXT.finditer(text)]
        return Scan(text, tuple(_with_order_numbers(found, numbers) if numbers else found))

    def find(self, text: str) -> list[Span]:
        return self.scan(text).spans

    def mask(self, text: str) -> Masked:
        return self.scan(text).masked()

    def strip(self, text: str) -> str:
        """The text without protected spans (for language detection)."""
        return self.scan(text).stripped()


def _with_order_numbers(found: list[_Found], numbers: list[tuple[int, int]]) -> list[_Found]:
    """Merge bare order numbers into the spans (both sorted, neither overlapping itself).

    A number that another span covers stays that span (a price, a URL), except a bare
    12-digit number the tracking pattern took: after an order word it is an order.
    """
    out: list[_Found] = []
    i = 0
    for start, end in numbers:
        while i < len(found) and found[i][1] <= start:
            out.append(found[i])
            i += 1
        if i < len(found) and found[i][0] < end:
            if found[i][:2] == (start, end) and found[i][2] == "tracking":
                out.append((start, end, "order"))
                i += 1
            continue
        out.append((start, end, "order"))
    out.extend(found[i:])
    return out


def _replace(text: str, spans: Sequence[_Found], token: Callable[[int], str]) -> str:
    parts: list[str] = []
    last = 0
    for n, (start, end, _) in enumerate(spans, 1):
        parts += (text[last:start], token(n))
        last = end
    parts.append(text[last:])
    return "".join(parts)


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
