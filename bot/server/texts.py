"""Locales and the sentences the server itself says (errors, handoff notes), localized."""

from __future__ import annotations

import re

from bot.errors import KnowledgeError
from bot.localize import language_of
from bot.service import BotService

_LOCALE_RE = re.compile(r"^[A-Za-z]{2,8}(?:[-_][A-Za-z0-9]{1,8})*$")
# Error codes without their own sentence in knowledge/i18n use one of these instead.
_FALLBACK_KEYS = {
    "unknown_type": "error_unsupported",
    "unsupported_version": "error_unsupported",
    "not_ready": "error_bad_frame",
    "bad_resume": "error_internal",
}


def valid_locale(tag: str) -> bool:
    return bool(_LOCALE_RE.match(tag))


def region_of(locale: str) -> str | None:
    """``es-MX`` -> ``MX``; ``zh-Hant-TW`` -> ``TW``; ``de`` -> None."""
    for part in re.split(r"[-_]", locale)[1:]:
        if (len(part) == 2 and part.isalpha()) or (len(part) == 3 and part.isdigit()):
            return part.upper()
    return None


class Texts:
    def __init__(self, bot: BotService) -> None:
        self.bot = bot
        self.languages = bot.languages
        self.default_language = bot.default_language

    def language_of(self, locale: str | None) -> str:
        """A locale reduced to a supported language, else the shop's default."""
        primary = language_of(locale)
        return primary if primary in self.languages else self.default_language

    def market_of(self, locale: str | None) -> str | None:
        """The market a locale's region names (``de-AT`` -> EU); None without a region."""
        region = region_of(locale) if locale else None
        if region is None:
            return None
        return self.bot.market(self.language_of(locale), region)

    def message(self, key: str, language: str, locale: str | None, **values: str) -> str:
        return self.bot.system_text(key, language, locale, **values)

    def error(self, code: str, language: str, locale: str | None, **values: str) -> str:
        """``error_<code>`` in the customer's language (a close one when there is none)."""
        try:
            return self.message(f"error_{code}", language, locale, **values)
        except KnowledgeError:
            return self.message(_FALLBACK_KEYS.get(code, "error_internal"), language, locale)
