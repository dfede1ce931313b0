"""Personal data that neither the model nor the stored trace may see.

Customers paste card numbers, IBANs, e-mail addresses and phone numbers into a chat. Before
a turn's text reaches a model (translation, generation) or the stage trace, each is replaced
by a labelled mark (``[card ••4242]``, ``[iban]``, ``[email]``, ``[phone]``). Card numbers
count only when Luhn-valid and IBANs only when their ISO 7064 check passes, so order numbers,
tracking numbers and amounts stay as they are. The original text is kept only where a person
must read it (the stored customer message, for agents) when ``privacy.keep_original`` is on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_CARD = re.compile(r"(?<![\w.,])\d(?:[ -]?\d){12,18}(?![\w]|[.,]\d)")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
# A phone number: a leading + (international), digit groups split by spaces, dots, dashes
# or parentheses ("06 12 34 56 78", "(555) 123-4567", "090-1234-5678"), 9-15 digits, or a
# national number of 9-11 digits starting with 0 ("0501234567"). A plain run of 12+ digits
# is a tracking number, not a phone; dates have at most 8 digits.
# Boundaries are ASCII: "090-1234-5678です" and "010-1234-5678로" are phones too.
_PHONE = re.compile(
    r"(?<![0-9A-Za-z+#/-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]\d{1,8}){1,5}"
    r"(?![0-9A-Za-z])"
    r"|(?<![0-9A-Za-z+#/-])(?:\+\d{8,15}|0\d{8,10})(?![0-9A-Za-z])"
)
_IBAN_LENGTHS = {
    "AT": 20, "BE": 16, "CH": 21, "DE": 22, "DK": 18, "ES": 24, "FI": 18, "FR": 27, "GB": 22,
    "IE": 22, "IT": 27, "LU": 20, "NL": 18, "NO": 15, "PL": 28, "PT": 25, "SE": 24, "SA": 24,
    "AE": 23, "BR": 29,
}  # fmt: skip


@dataclass(frozen=True)
class Redaction:
    text: str  # with the marks
    kinds: tuple[str, ...]  # what was removed, in order: "card", "iban", "email", "phone"

    @property
    def changed(self) -> bool:
        return bool(self.kinds)


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def iban_ok(raw: str) -> bool:
    iban = raw.replace(" ", "")
    expected = _IBAN_LENGTHS.get(iban[:2])
    if expected is not None and len(iban) != expected:
        return False
    if not 15 <= len(iban) <= 34:
        return False
    rearranged = iban[4:] + iban[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def redact(text: str) -> Redaction:
    """``text`` with card numbers, IBANs, e-mail addresses and phone numbers marked out."""
    kinds: list[str] = []

    def card(match: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", match.group(0))
        if 13 <= len(digits) <= 19 and luhn_ok(digits):
            kinds.append("card")
            return f"[card ••{digits[-4:]}]"
        return match.group(0)

    def iban(match: re.Match[str]) -> str:
        if iban_ok(match.group(0)):
            kinds.append("iban")
            return "[iban]"
        return match.group(0)

    def email(match: re.Match[str]) -> str:
        kinds.append("email")
        return "[email]"

    def phone(match: re.Match[str]) -> str:
        raw = match.group(0)
        digits = sum(ch.isdigit() for ch in raw)
        if 9 <= digits <= 15 and not _looks_like_amount(raw):
            kinds.append("phone")
            return "[phone]"
        return raw

    text = _CARD.sub(card, text)
    text = _IBAN.sub(iban, text)
    text = _EMAIL.sub(email, text)
    text = _PHONE.sub(phone, text)
    return Redaction(text, tuple(kinds))


def _looks_like_amount(raw: str) -> bool:
    """ "1.299.000" or "1 299 000": thousands groups of exactly three digits."""
    groups = re.split(r"[ .]", raw)
    return len(groups) > 1 and all(len(g) == 3 for g in groups[1:]) and len(groups[0]) <= 3
