"""What the server and the CLI may ask of the bot: one narrow interface, by intent.

bot/server/ and bot/cli.py hold a ``BotService`` and call only these methods; they never
reach into the pipeline's parts (detector, translator and its memory, localizer, knowledge,
config). ``bot.pipeline.Pipeline`` implements it; only the composition roots
(bot/server/app.py, the CLI's builders, the replay runner) know the concrete class.

Layering: bot.pipeline imports the value types below; this module names the pipeline's
``TurnContext`` and ``TurnResult`` for the type checker only, and imports nothing of
bot/server or bot/store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # the turn's value types; bot.pipeline imports this module's at run time
    from bot.pipeline import OnDelta, TurnContext, TurnResult


@dataclass(frozen=True)
class Annotation:
    """A customer message the bot does not answer, read for the agent."""

    language: str
    pivot: str | None  # in the pivot language; None when nothing could translate it


@dataclass(frozen=True)
class CustomerText:
    """A text translated for a customer (an agent's reply, ``bot translate``)."""

    text: str  # as written
    source: str
    target: str
    delivered: str | None  # what the customer would read; None when translation failed
    engine: str | None  # identity | memory | cache | llm
    similarity: float = 1.0  # below 1: the approved translation of a similar sentence
    lost: tuple[str, ...] = ()  # protected spans (order numbers, amounts...) not delivered
    error: str | None = None  # why there is no translation
    # What else the translation path warns about, as (code, message): e.g. a
    # back-translation that disagrees with what was written.
    notices: tuple[tuple[str, str], ...] = ()
    back: str | None = None  # the back-translation, when one was made
    agreement: float | None = None  # how well ``back`` agrees with ``text`` (chrF++, 0-100)
    ms: float | None = None  # how long the translation took


class BotService(Protocol):
    """The bot as the server sees it."""

    @property
    def languages(self) -> tuple[str, ...]:
        """The launch languages, in the shop's order."""
        ...

    @property
    def default_language(self) -> str: ...

    @property
    def index_fingerprint(self) -> str:
        """Which FAQ index answers (for ``/healthz``)."""
        ...

    # -- turns -----------------------------------------------------------------------------

    async def answer(
        self, text: str, context: TurnContext, *, on_delta: OnDelta | None = None
    ) -> TurnResult:
        """One customer turn; ``on_delta`` receives the reply's checked pieces as they
        stream."""
        ...

    def chosen(self, text: str, faq_id: str, context: TurnContext) -> TurnResult:
        """The customer picked ``faq_id`` from a clarify reply's choices."""
        ...

    def has_faq(self, faq_id: str) -> bool: ...

    async def annotate(self, text: str, *, current: str | None, locale: str | None) -> Annotation:
        """A message nobody answers here (an agent has the conversation): its language and
        pivot text, for the agent."""
        ...

    def offers_human(self, reply: str) -> bool:
        """Whether a reply the bot sent ends by offering a person."""
        ...

    # -- texts -----------------------------------------------------------------------------

    def title(self, faq_id: str, language: str) -> str:
        """An FAQ entry as a customer sees it: its question in their language."""
        ...

    def system_text(self, key: str, language: str, locale: str | None, **values: str) -> str:
        """A sentence of the service (knowledge/i18n), localized; ``KnowledgeError`` when
        the key does not exist."""
        ...

    def market(self, language: str, country: str | None) -> str:
        """The market a customer of this language and country buys in."""
        ...

    def ui_strings(self, language: str) -> tuple[str, dict[str, str]]:
        """The widget's writing direction (ltr, rtl) and UI strings in ``language``."""
        ...

    # -- agents ----------------------------------------------------------------------------

    def faqs(self) -> list[tuple[str, str]]:
        """(FAQ id, English question) of every entry, for the console's canned answers."""
        ...

    def canned_answer(
        self, faq_id: str, language: str, *, locale: str | None, market: str | None
    ) -> str | None:
        """The curated answer of ``faq_id`` as this customer would read it; None when there
        is no such entry."""
        ...

    async def translate_for_customer(
        self,
        text: str,
        source: str | None,
        target: str,
        *,
        locale: str | None = None,
        market: str | None = None,
        check: bool = False,
    ) -> CustomerText:
        """``text`` as a customer of ``target`` (locale, market) would read it: protected
        spans kept, amounts written their way; ``source`` None: detected; ``check``: also
        read a model translation back (``back``, ``agreement``, a notice when they disagree).
        Never raises for a failed translation (``delivered`` None, ``error`` says why)."""
        ...

    def remember_translation(self, source: str, target: str, text: str, translation: str) -> None:
        """An approved translation, used from now on (the store keeps it for restarts)."""
        ...
