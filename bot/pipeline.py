"""One customer turn: detect -> translate in -> retrieve -> generate -> translate out -> localize.

Each stage is a module taking data and injected clients; this module wires them, decides
which path a turn takes, and records the trace:

- small talk ("merci", "hola"): the bot's own curated sentence;
- a clear FAQ match with nothing turn-specific in the message: the curated localized
  answer, verbatim (no model call: what most customers read);
- a turn-specific message (an order number, "I wore it once", a close match): by default
  (``generate.mode = "compose"``) the *composed* reply: a localizer's acknowledgement of
  the customer's specifics and the curated answer verbatim (bot/compose.py). The small
  models contradict the policy too often to decide these turns (docs/eval.md);
- with ``generate.mode = "auto"`` the model writes those replies instead, from the top
  passages, in the customer's language (``generate.language = "customer"``) or in English
  then translated (``"pivot"``); every sentence passes the faithfulness gate before it
  streams (bot/faithful.py), and any failure (engine down, unfaithful sentence, lost
  placeholder, wrong language) falls back to the composed reply, plus an offer of a human
  when the engine is the problem;
- no FAQ above the threshold: "no answer" and an offer of a human (repeated: handoff).

Which path a turn takes is one pure function, ``choose_route``.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot import handoff
from bot.agent_translate import AgentTranslator
from bot.compose import ComposeTexts, compose, load_compose
from bot.config import Config
from bot.detect import Detection, LanguageDetector, Lexicon, load_lexicon
from bot.errors import EngineBusy, KnowledgeError, LLMError, TranslationError
from bot.faithful import (
    FaithfulnessChecker,
    SentenceGate,
    Unfaithful,
    drop_opening_polarity,
    numbers_in,
)
from bot.generate import GroundedReply, Passage, generate_reply
from bot.knowledge import OUT_OF_SCOPE, Knowledge, load_knowledge
from bot.llm import LLMClient
from bot.localize import Locality, Localizer, language_of, locality_for
from bot.mask import Masker, Scan, Span
from bot.redact import Redaction, redact
from bot.retrieve import CLARIFY, Embedder, Hit, Retriever
from bot.service import Annotation, CustomerText
from bot.trace import Trace
from bot.translate import LANGUAGE_NAMES, TranslationMemory, Translator, normalize

log = logging.getLogger(__name__)

OnDelta = Callable[[str], Awaitable[None]]
_SMALL_TALK = {"greeting": "greeting", "thanks": "thanks_reply", "goodbye": "goodbye_reply"}
# The customer's own references, which a reply repeats exactly (never their amounts).
REFERENCE_KINDS = ("order", "tracking", "sku")
INLINE_DETECT_CHARS = 300  # longer messages are detected in a thread (bench/bench_pipeline.py)


@dataclass
class TurnContext:
    """What the pipeline knows about the conversation before this turn."""

    language: str | None = None  # the conversation's current language
    locale_hint: str | None = None  # from the widget / page, e.g. "es-MX"
    market: str | None = None  # explicit market (EU, US...), else from locale
    chosen_language: str | None = None  # the customer picked a language explicitly
    no_answer_streak: int = 0
    history: list[tuple[str, str]] = field(default_factory=list)  # (role, pivot text)
    offer_pending: bool = False  # the bot's last message offered a person
    earlier: list[handoff.Asked] = field(default_factory=list)  # the customer's last turns


@dataclass
class TurnResult:
    text: str
    language: str
    detection: Detection
    pivot: str | None
    faq_ids: list[str]
    reply: str
    handoff: bool
    handoff_reason: str | None
    answered: bool
    source: str  # curated | composed | generated | fallback | message
    trace: Trace
    locality: Locality
    reply_pivot: str | None = None
    redacted: str | None = None  # ``text`` with personal data marked out
    # A clarify reply: the entries to pick from, [{"id": faq id, "title": localized}].
    choices: list[dict[str, str]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "language": self.language,
            "pivot": self.pivot,
            "faq_ids": self.faq_ids,
            "reply": self.reply,
            "handoff": self.handoff,
            "handoff_reason": self.handoff_reason,
            "source": self.source,
            "choices": self.choices,
            "market": self.locality.market,
            "trace": self.trace.as_list(),
            "total_ms": round(self.trace.total_ms, 1),
        }


@dataclass(frozen=True)
class Route:
    """Which path an answered turn takes, and why."""

    path: str  # curated | composed | generated
    why: str
    top: Hit
    second: Hit | None = None  # a nearly tied runner-up, answered too
    specific: bool = True  # the turn carries something of the customer's own

    def as_dict(self) -> dict[str, object]:
        second = self.second.faq_id if self.second else None
        return {"path": self.path, "why": self.why, "top": self.top.faq_id, "second": second}


def choose_route(
    *,
    mode: str,
    model_ready: bool,
    hits: list[Hit],
    specifics: list[Span],
    direct_threshold: float,
    direct_margin: float,
    second_probability: float = 1.0,
    ambiguous: bool = False,
) -> Route:
    """Curated when the top FAQ fits plainly; else composed, or generated where allowed.

    ``hits``: the entries retrieval decided on, best first (at least one), then the
    runner-up if there is one; ``ambiguous``: retrieval could not tell the first two apart
    (its "clarify"), so both are answered. A reply to the customer's own situation also
    answers the runner-up when its probability is at least ``second_probability``: long,
    specific messages are where the ranking errs most, and then mostly with the right
    entry second.
    """
    top = hits[0]
    runner = hits[1] if len(hits) > 1 and hits[1].faq_id != top.faq_id else None
    lead = top.score - runner.score if runner else 1.0
    own = [s.kind for s in specifics if s.kind != "term"]
    close = runner if runner is not None and (ambiguous or lead < direct_margin) else None
    likely = runner if runner is not None and runner.confidence >= second_probability else None
    if mode == "never":
        return Route("curated", "generate.mode is never", top, specific=False)
    specific = True
    if own:
        why = f"the customer's own {', '.join(dict.fromkeys(own))}"
    elif top.dense < direct_threshold:
        why = f"closest match {top.dense:.3f} < {direct_threshold}"
    elif close is not None:  # a plain question that two entries answer: both, no preamble
        why, specific = f"two entries fit: {top.faq_id} or {close.faq_id}", False
    elif mode == "always" and model_ready:
        return Route("generated", "generate.mode is always", top, close, specific=False)
    else:
        return Route("curated", "a plain FAQ question", top, specific=False)
    second = close or (likely if specific else None)
    if mode in ("auto", "always") and model_ready:
        return Route("generated", why, top, second, specific)
    return Route("composed", why, top, second, specific)


def left_out(reply: str, specifics: list[Span]) -> list[str]:
    """The customer's order, tracking and SKU numbers, as they wrote them, that ``reply``
    does not repeat."""
    return [s.text for s in specifics if s.kind in REFERENCE_KINDS and s.text not in reply]


def _customer_references(specifics: list[Span], language: str) -> set[str]:
    """Numbers a reply may repeat from the customer's message: their order, tracking and
    SKU numbers (never their amounts or durations: those are not policy facts)."""
    out: set[str] = set()
    for span in specifics:
        if span.kind in REFERENCE_KINDS:
            out |= numbers_in(span.text, language)
    return out


@dataclass(frozen=True)
class _Draft:
    reply: str
    faq_ids: list[str]
    source: str
    reply_pivot: str | None = None
    choices: tuple[str, ...] = ()  # clarify: the FAQ ids offered as buttons


class Pipeline:
    def __init__(
        self,
        config: Config,
        knowledge: Knowledge,
        *,
        detector: LanguageDetector,
        lexicon: Lexicon,
        translator: Translator,
        retriever: Retriever,
        localizer: Localizer,
        masker: Masker,
        llm: LLMClient | None,
        compose_texts: dict[str, ComposeTexts],
        agents_translator: Translator | None = None,
    ) -> None:
        self.config = config
        self.knowledge = knowledge
        self.detector = detector
        self.lexicon = lexicon
        self.translator = translator
        # Agents' replies: over their own model when console.translate_model names one.
        self.agent_translator = AgentTranslator(
            agents_translator or translator,
            language_of=lambda text: detector.detect(text).language,
        )
        self.retriever = retriever
        self.localizer = localizer
        self.masker = masker
        self.llm = llm
        self.compose = compose_texts
        self.checker = FaithfulnessChecker({k: v.check for k, v in compose_texts.items()})
        # Every state some policy of the shop rules out, whichever entry retrieval answers
        # with: "can I get cash for my gift card?" retrieved as refunds.method (which names no
        # excluded state) must still not be told "I can refund it in cash" (bot eval replies).
        self.excluded_states = sorted({s for e in knowledge.entries.values() for s in e.excludes})
        self.handoff_rules = handoff.load_rules(
            config.shop.knowledge_dir / "handoff.toml", config.shop.languages
        )
        self._offers = tuple(
            knowledge.message(key, lang).rstrip()
            for lang in config.shop.languages
            for key in ("handoff_offer", "no_answer")
        )

    @classmethod
    def build(
        cls, config: Config, llm: LLMClient | None, *, agents_llm: LLMClient | None = None
    ) -> Pipeline:
        """Load knowledge, detector, embedder and index (blocking: call in a thread).
        ``agents_llm``: the model of agents' replies when it is not ``llm``."""
        knowledge = load_knowledge(config.shop.knowledge_dir)
        masker = Masker(knowledge.glossary)
        lexicon = load_lexicon(config.shop.knowledge_dir / "lexicon.toml")
        detector = LanguageDetector(
            config.shop.languages,
            config.detect,
            lexicon=lexicon,
            masker=masker,
            default=config.shop.default_language,
            preload=True,
        )
        retriever = Retriever(config.retrieve.index_dir, Embedder(config.model.cache_dir))

        def language_of(text: str) -> str | None:
            return detector.detect(text).language

        memory = TranslationMemory.from_knowledge(knowledge)

        def translator_over(model: LLMClient | None) -> Translator:
            return Translator(
                knowledge,
                masker,
                memory,  # one memory: a pair an agent approves serves both
                model,
                min_similarity=config.translate.memory_min_similarity,
                max_tokens=config.translate.max_tokens,
                language_of=language_of,
            )

        translator = translator_over(llm)
        return cls(
            config,
            knowledge,
            detector=detector,
            lexicon=lexicon,
            translator=translator,
            retriever=retriever,
            localizer=Localizer(knowledge),
            masker=masker,
            llm=llm,
            compose_texts=load_compose(config.shop.knowledge_dir, config.shop.languages),
            agents_translator=translator_over(agents_llm) if agents_llm is not None else None,
        )

    # -- the turn ---------------------------------------------------------------------

    async def answer(
        self, text: str, context: TurnContext, *, on_delta: OnDelta | None = None
    ) -> TurnResult:
        """Run one turn; ``on_delta`` receives the reply's streamed pieces, if any.

        Every stage sees the text with personal data marked out (bot/redact.py); the result
        keeps the customer's own words in ``text`` and the redacted ones in ``redacted``.
        """
        trace = Trace()
        redaction = redact(text) if self.config.privacy.redact else Redaction(text, ())
        if redaction.changed:
            with trace.stage("redact") as out:
                out.update(kinds=list(redaction.kinds))
        clean = redaction.text
        # The one pass over the message for protected spans (order numbers, amounts, brand
        # names...): detection, the lexicon, translation and the route all read this scan.
        scan = self.masker.scan(clean)
        result = await self._turn(scan, context, on_delta, trace)
        result.text, result.redacted = text, clean
        deferred = [s for s in result.trace.stages if s.output.get("deferred")]
        if result.pivot is None and deferred:
            with result.trace.stage("translate_in") as out:
                result.pivot = await self._pivot(
                    scan, result.language, self.config.shop.pivot, out, use_model=True
                )
        return result

    async def _turn(
        self, scan: Scan, context: TurnContext, on_delta: OnDelta | None, trace: Trace
    ) -> TurnResult:
        pivot_lang = self.config.shop.pivot
        text = scan.text

        with trace.stage("detect") as out:
            # lingua and langdetect take 0.1-0.4 ms on a message, less than a hand-off to a
            # thread and back; a long message (a few ms) is detected off the event loop.
            if len(text) <= INLINE_DETECT_CHARS:
                detection = self._detect(scan, context)
            else:
                detection = await asyncio.to_thread(self._detect, scan, context)
            out.update(detection.as_dict())
        language = detection.language
        where = locality_for(
            self.knowledge, language, locale_hint=context.locale_hint, market=context.market
        )

        # The bot offered a person last turn: "Nein", "non merci", "いいえ、結構です" answer the
        # offer; they are not questions for the FAQ (nor small talk).
        offer = (
            handoff.offer_answer(text, language, rules=self.handoff_rules)
            if context.offer_pending
            else None
        )
        if offer == "decline":
            with trace.stage("localize") as out:
                reply = self.localizer.message("offer_declined", where)
                out.update(source="message", key="offer_declined", locale=where.locale)
            draft = _Draft(reply, [], "message")
            return self._result(text, detection, None, where, trace, draft, answered=True)
        if offer == "accept":
            decision = handoff.HandoffDecision(True, "customer_request", f"offer accepted: {text}")
            return self._handoff(text, detection, None, where, trace, decision, None)

        intent = self.lexicon.intent(scan.stripped())
        if intent in _SMALL_TALK:
            with trace.stage("localize") as out:
                reply = self.localizer.message(_SMALL_TALK[intent], where)
                out.update(source="message", key=_SMALL_TALK[intent], locale=where.locale)
            draft = _Draft(reply, [], "message")
            return self._result(text, detection, None, where, trace, draft, answered=True)

        # When the model answers in the customer's language, the English pivot is only for
        # the record (agents, analytics): a model translation then runs after the reply is
        # drafted, so the first streamed token does not wait for it.
        defer_pivot = self.config.generate.language == "customer" and self.llm is not None
        with trace.stage("translate_in") as out:
            pivot = await self._pivot(scan, language, pivot_lang, out, use_model=not defer_pivot)
            out["deferred"] = defer_pivot and pivot is None

        with trace.stage("retrieve") as out:
            started = time.perf_counter()
            vectors = await self.retriever.embed_async([text])  # batched with other turns
            out["embed_ms"] = round((time.perf_counter() - started) * 1000, 2)
            # Searched with the other turns' messages: one pass over the index for all.
            hits = await self.retriever.search_async(vectors[0], text, k=self.config.retrieve.top_k)
            found = self.retriever.decide(hits, language)
            # answer: the top entry; clarify: two entries that together are likely, the
            # customer is asked which one (buttons); abstain: "no answer" and an offer.
            by_id = {h.faq_id: h for h in hits}
            answerable = [by_id[f] for f in found.faq_ids if f in by_id]
            out.update(
                hits=[h.as_dict() for h in hits],
                decision=found.as_dict(),
                answered=bool(answerable),
                off_topic=found.off_topic,
            )

        top = answerable[0] if answerable else None
        decision = handoff.decide(
            original=text,
            language=language,
            pivot=pivot,
            top_faq=top.faq_id if top else None,
            answered=top is not None,
            no_answer_streak=context.no_answer_streak,
            earlier=context.earlier,
            rules=self.handoff_rules,
        )
        if decision.handoff:
            return self._handoff(text, detection, pivot, where, trace, decision, top)
        if top is None:
            with trace.stage("localize") as out:
                key = "clarify" if intent == "ack" else "no_answer"
                reply = self.localizer.message(key, where)
                out.update(source="message", key=key, locale=where.locale)
            draft = _Draft(reply, [], "message")
            return self._result(text, detection, pivot, where, trace, draft, answered=False)

        if found.action == CLARIFY:
            draft = self._clarify(found.faq_ids, where, trace)
            return self._result(text, detection, pivot, where, trace, draft, answered=True)
        # The runner-up goes along: a reply composed for the customer's own situation
        # answers it too when it is still probable (choose_route).
        runner = [h for h in hits if h.faq_id not in found.faq_ids and h.faq_id != OUT_OF_SCOPE]
        draft = await self._draft(
            scan,
            pivot,
            answerable + runner[:1],
            where,
            context,
            trace,
            on_delta,
            ambiguous=len(answerable) > 1,
        )
        return self._result(text, detection, pivot, where, trace, draft, answered=True)

    def _clarify(self, faq_ids: tuple[str, ...], where: Locality, trace: Trace) -> _Draft:
        """Two entries fit: ask which one the customer means; the widget shows both as
        buttons (``choices``) and a click comes back as a message with ``choice``."""
        with trace.stage("clarify") as out:
            reply = self.localizer.message("clarify_choices", where)
            out.update(source="message", key="clarify_choices", offered=list(faq_ids))
        return _Draft(reply, [], "message", choices=faq_ids)

    def chosen(self, text: str, faq_id: str, context: TurnContext) -> TurnResult:
        """The customer picked ``faq_id`` from a clarify reply's choices (``text``: the
        button's title): that entry's curated answer, in the conversation's language."""
        trace = Trace()
        languages = self.config.shop.languages
        wanted = (context.chosen_language, context.language, language_of(context.locale_hint))
        language = next((lang for lang in wanted if lang in languages), None)
        language = language or self.config.shop.default_language
        detection = Detection(language, 1.0, "choice")
        where = locality_for(
            self.knowledge, language, locale_hint=context.locale_hint, market=context.market
        )
        with trace.stage("choice") as out:
            out.update(faq_id=faq_id, text=text)
        draft = self._curated(faq_id, where, trace, "curated")
        pivot = self.knowledge.entry(faq_id).questions[0]
        return self._result(text, detection, pivot, where, trace, draft, answered=True)

    def _handoff(
        self,
        text: str,
        detection: Detection,
        pivot: str | None,
        where: Locality,
        trace: Trace,
        decision: handoff.HandoffDecision,
        top: Hit | None,
    ) -> TurnResult:
        with trace.stage("handoff") as out:
            out.update(decision.as_dict())
            reply = self.localizer.message("handoff_started", where)
        draft = _Draft(reply, [top.faq_id] if top else [], "message")
        return self._result(
            text, detection, pivot, where, trace, draft,
            answered=top is not None, handoff_reason=decision.reason,
        )  # fmt: skip

    def title(self, faq_id: str, language: str) -> str:
        """What a customer sees for an FAQ entry (its first curated question in their
        language), never the internal id."""
        localized = self.knowledge.i18n.get(language)
        entry = localized.faq.get(faq_id) if localized else None
        if entry is not None and entry.questions:
            return entry.questions[0]
        return self.knowledge.entry(faq_id).questions[0]

    def offers_human(self, reply: str) -> bool:
        """Whether a reply the bot sent ends by offering a person (its next turn may be the
        customer's answer to that offer)."""
        return reply.rstrip().endswith(self._offers)

    # -- what the server and the CLI ask (bot.service.BotService) ------------------------

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(self.config.shop.languages)

    @property
    def default_language(self) -> str:
        return self.config.shop.default_language

    @property
    def index_fingerprint(self) -> str:
        return self.retriever.fingerprint

    def has_faq(self, faq_id: str) -> bool:
        return faq_id in self.knowledge.entries

    async def annotate(self, text: str, *, current: str | None, locale: str | None) -> Annotation:
        """Language and pivot of a message nobody answers here, from one scan of it."""
        scan = self.masker.scan(text)
        hint = language_of(locale)
        detection = await asyncio.to_thread(
            self.detector.detect, text, current=current, hint=hint, scan=scan
        )
        out: dict[str, Any] = {}
        pivot = await self._pivot(
            scan, detection.language, self.config.shop.pivot, out, use_model=True
        )
        if pivot is None:
            log.info("no pivot for a message to an agent: %s", out.get("error"))
        return Annotation(detection.language, pivot)

    def system_text(self, key: str, language: str, locale: str | None, **values: str) -> str:
        where = locality_for(self.knowledge, language, locale_hint=locale)
        return self.localizer.message(key, where, **values)

    def market(self, language: str, country: str | None) -> str:
        return self.knowledge.market_code(language=language, country=country)

    def ui_strings(self, language: str) -> tuple[str, dict[str, str]]:
        settings = self.knowledge.languages.get(language)
        return (settings.direction if settings else "ltr"), self.knowledge.ui(language)

    def faqs(self) -> list[tuple[str, str]]:
        return [(e.id, e.questions[0]) for e in self.knowledge.entries.values()]

    def canned_answer(
        self, faq_id: str, language: str, *, locale: str | None, market: str | None
    ) -> str | None:
        where = locality_for(self.knowledge, language, locale_hint=locale, market=market)
        try:
            return self.localizer.curated(faq_id, where)
        except KnowledgeError:
            return None

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
        scan = self.masker.scan(text)
        if source is None:
            detection = await asyncio.to_thread(self.detector.detect, text, scan=scan)
            source = detection.language
        where = locality_for(self.knowledge, target, locale_hint=locale, market=market)

        def render(kind: str, span: str) -> str:
            return self.render_span(kind, span, where)

        try:  # the agents' path: sentence by sentence, examples from the memory
            out = await self.agent_translator.translate(
                text, source, target, render=render, scan=scan, check=check,
                variant=f"{where.locale}/{where.market}",
            )  # fmt: skip
        except (LLMError, TranslationError) as exc:
            return CustomerText(text, source, target, None, None, error=str(exc))
        lost = tuple(w.message for w in out.warnings if w.code == "placeholder_lost")
        notices = tuple((w.code, w.message) for w in out.warnings if w.code == "back_translation")
        return CustomerText(
            text, source, target, out.text, out.engine, out.similarity, lost,
            notices=notices, back=out.back, agreement=out.agreement, ms=out.ms,
        )  # fmt: skip

    def remember_translation(self, source: str, target: str, text: str, translation: str) -> None:
        self.translator.memory.add(source, target, text, translation)

    def _detect(self, scan: Scan, context: TurnContext) -> Detection:
        if context.chosen_language in self.config.shop.languages:
            return Detection(context.chosen_language, 1.0, "chosen")
        hint = language_of(context.locale_hint)
        return self.detector.detect(scan.text, current=context.language, hint=hint, scan=scan)

    async def _pivot(
        self, scan: Scan, language: str, pivot_lang: str, out: dict[str, Any], *, use_model: bool
    ) -> str | None:
        try:
            translation = await self.translator.translate(
                scan.text, language, pivot_lang, use_model=use_model, scan=scan
            )
        except (LLMError, TranslationError) as exc:
            out.update(engine="none", error=f"{type(exc).__name__}: {exc}")
            return None
        out.update(translation.as_dict())
        return translation.text

    async def _draft(
        self,
        scan: Scan,
        pivot: str | None,
        hits: list[Hit],
        where: Locality,
        context: TurnContext,
        trace: Trace,
        on_delta: OnDelta | None,
        *,
        ambiguous: bool = False,
    ) -> _Draft:
        specifics = scan.spans
        route = choose_route(
            mode=self.config.generate.mode,
            model_ready=self.llm is not None,
            hits=hits,
            specifics=specifics,
            ambiguous=ambiguous,
            direct_threshold=self.config.retrieve.direct_threshold,
            direct_margin=self.config.retrieve.direct_margin,
            second_probability=self.config.retrieve.second_probability,
        )
        with trace.stage("route") as out:
            out.update(route.as_dict())
        if route.path == "curated":
            # The localizer's "Yes, ..." answers the entry's own questions. Said to another
            # question it may answer something the entry does not decide ("can I still
            # exchange the briefs I unsealed?" -> "Yes, exchanges are free"), so only a
            # message that is one of the indexed questions keeps it.
            keep = self.retriever.indexed(scan.text)
            return self._curated(route.top.faq_id, where, trace, "curated", keep_opening=keep)
        if route.path == "composed":
            return self._composed(route, specifics, where, trace)
        draft = await self._generated(
            scan.text, pivot, route, specifics, where, context, trace, on_delta
        )
        if draft.source == "generated" and (lost := left_out(draft.reply, specifics)):
            # The customer's order or SKU number is theirs to see in the answer: the composed
            # reply acknowledges it, a model reply that dropped it is not sent.
            return self._fallback(route, specifics, where, trace, f"left out {', '.join(lost)}")
        return draft

    def _composed(
        self,
        route: Route,
        specifics: list[Span],
        where: Locality,
        trace: Trace,
        *,
        why: str | None = None,
    ) -> _Draft:
        """Acknowledge the customer's specifics, then the curated answer(s) verbatim; a plain
        question (the model's fallback) gets the curated answer alone."""
        texts = self.compose.get(where.language) or self.compose[self.config.shop.pivot]
        faq_ids = [route.top.faq_id] + ([route.second.faq_id] if route.second else [])
        answers = [
            None if text is None else drop_opening_polarity(text, texts.check, where.language)
            for text in (self.localizer.curated(faq_id, where) for faq_id in faq_ids)
        ]
        if (not route.specific and route.second is None) or any(a is None for a in answers):
            draft = self._curated(route.top.faq_id, where, trace, "curated")
            if why:
                trace.stages[-1].output["fallback_reason"] = why
            return draft
        with trace.stage("compose") as out:
            acknowledgement = texts.acknowledgement(specifics) if route.specific else ""
            also = (texts.acknowledge["also"], answers[1] or "") if route.second else None
            reply = compose(acknowledgement, answers[0] or "", also)
            out.update(faq_ids=faq_ids, locale=where.locale, market=where.market)
            if why:
                out["fallback_reason"] = why
        return _Draft(reply, faq_ids, "composed")

    async def _generated(
        self,
        text: str,
        pivot: str | None,
        route: Route,
        specifics: list[Span],
        where: Locality,
        context: TurnContext,
        trace: Trace,
        on_delta: OnDelta | None,
    ) -> _Draft:
        """The model writes the reply; every sentence passes the gate before it streams."""
        pivot_lang = self.config.shop.pivot
        top = route.top
        # Prompt prefill dominates time to first token on a CPU: pass the top passage and
        # only a runner-up that is nearly as close (two at most).
        hits = [top] + ([route.second] if route.second else [])
        in_customer_language = (
            self.config.generate.language == "customer"
            and where.language != pivot_lang
            and all(self.localizer.curated(h.faq_id, where) is not None for h in hits)
        )
        if not self.llm or not self.llm.available or (pivot is None and not in_customer_language):
            return self._fallback(route, specifics, where, trace, "engine unavailable", human=True)
        if in_customer_language:
            # Curated localized passages: the model copies facts in the customer's language
            # and the reply streams at once, with no translation step after it.
            passages = [
                Passage(h.faq_id, self.localizer.curated(h.faq_id, where) or "") for h in hits
            ]
            question, stream, reply_language = text, on_delta, where.language
        else:
            english = locality_for(self.knowledge, pivot_lang, market=where.market)
            passages = [
                Passage(
                    h.faq_id, self.localizer.render(self._english_answer(h.faq_id, where), english)
                )
                for h in hits
            ]
            question, reply_language = pivot or text, pivot_lang
            stream = on_delta if where.language == pivot_lang else None
        gate = SentenceGate(
            self.checker,
            question=question,
            passages=[p.text for p in passages],
            language=reply_language,
            allowed_numbers=_customer_references(specifics, reply_language),
            excluded=self.excluded_states,
            on_delta=stream,
        )
        settings = self.knowledge.languages.get(reply_language)

        watch = CopyWatch(passages)

        async def feed(piece: str) -> None:
            if copied := watch.feed(piece):
                raise Restating(copied)
            await gate.feed(piece)

        restated = False
        with trace.stage("generate") as out:
            try:
                reply = await generate_reply(
                    self.llm,
                    shop=str(self.knowledge.shop.get("name", "the shop")),
                    passages=passages,
                    question=question,
                    history=context.history,
                    max_tokens=self.config.generate.max_tokens,
                    temperature=self.config.generate.temperature,
                    on_delta=feed,
                    language=LANGUAGE_NAMES.get(reply_language, reply_language),
                    register=settings.pronoun
                    if settings and reply_language != pivot_lang
                    else None,
                )
                await gate.finish(reply.text)
            except EngineBusy as exc:  # admission control: answer now, the engine is fine
                out.update(error=f"{type(exc).__name__}: {exc}")
                return self._fallback(route, specifics, where, trace, "engine busy")
            except LLMError as exc:
                out.update(error=f"{type(exc).__name__}: {exc}")
                return self._fallback(route, specifics, where, trace, "engine failed", human=True)
            except Unfaithful as exc:
                out.update(rejected=[str(p) for p in exc.problems], streamed=gate.released)
                return self._fallback(route, specifics, where, trace, "unfaithful reply")
            except Restating as exc:  # stopped: the rest would be the passage, copied
                copy, restated = watch.written.strip(), True
                out.update(restating=exc.faq_id, streamed=gate.released, written=copy)
                usage = {  # what the engine wrote before it was stopped
                    "model": self.llm.config.request_model,
                    "completion_tokens": watch.pieces,
                    "finish_reason": "stopped",
                }
                reply = GroundedReply(copy, copy, [exc.faq_id], usage)
            out.update(
                text=reply.text, faq_ids=reply.faq_ids, usage=reply.usage, language=reply_language
            )
        if not reply.text:
            return self._fallback(route, specifics, where, trace, "empty reply")
        cited = reply.faq_ids[0]
        faq_answer = next(p.text for p in passages if p.faq_id == cited)
        if restated or _similar(reply.text, faq_answer) >= 0.85:
            # The model restated the FAQ answer: the curated localization says it best, after
            # the acknowledgement of the customer's order number or item when there is one.
            if route.specific:
                return self._composed(route, specifics, where, trace, why="restated the FAQ")
            return self._curated(cited, where, trace, "curated", reply_pivot=reply.text)
        if in_customer_language:
            if self.detector.detect(reply.text, hint=where.language).language != where.language:
                return self._fallback(route, specifics, where, trace, "reply in the wrong language")
            with trace.stage("localize") as out:
                out.update(source="generated", locale=where.locale, market=where.market)
            return _Draft(reply.text, reply.faq_ids, "generated", None)
        if where.language == pivot_lang:
            return _Draft(reply.text, reply.faq_ids, "generated", reply.text)

        with trace.stage("translate_out") as out:
            try:
                translation = await self.translator.translate(
                    reply.text,
                    pivot_lang,
                    where.language,
                    render=lambda kind, span: self.render_span(kind, span, where),
                    on_delta=on_delta,
                )
                out.update(translation.as_dict())
            except (LLMError, TranslationError) as exc:
                out.update(error=f"{type(exc).__name__}: {exc}")
                translation = None
        if translation is None:
            return self._fallback(route, specifics, where, trace, "translation rejected")
        with trace.stage("localize") as out:
            out.update(source="generated", locale=where.locale, market=where.market)
        return _Draft(translation.text, reply.faq_ids, "generated", reply.text)

    def _english_answer(self, faq_id: str, where: Locality) -> str:
        return self.knowledge.entry(faq_id).answer.for_market(where.market)

    def render_span(self, kind: str, span: str, where: Locality) -> str:
        """A protected span as the customer's locale writes it (amounts re-formatted)."""
        return self.localizer.reformat_amount(span, where) if kind == "price" else span

    def _curated(
        self,
        faq_id: str,
        where: Locality,
        trace: Trace,
        source: str,
        *,
        reply_pivot: str | None = None,
        keep_opening: bool = True,
    ) -> _Draft:
        """The entry's curated answer; without ``keep_opening``, less an opening yes or no."""
        with trace.stage("localize") as out:
            reply = self.localizer.curated(faq_id, where)
            language = where.language
            if reply is None:  # no curated localization: show the English answer, say so
                english = locality_for(self.knowledge, "en", market=where.market)
                reply = self.localizer.curated(faq_id, english) or ""
                language = "en"
                out.update(missing_localization=where.language)
            texts = self.compose.get(language)
            if not keep_opening and texts is not None:
                plain = drop_opening_polarity(reply, texts.check, language)
                if plain != reply:
                    reply = plain
                    out.update(opening_dropped=True)
            out.update(source=source, faq_id=faq_id, locale=where.locale, market=where.market)
        return _Draft(reply, [faq_id], source, reply_pivot)

    def _fallback(
        self,
        route: Route,
        specifics: list[Span],
        where: Locality,
        trace: Trace,
        why: str,
        *,
        human: bool = False,
    ) -> _Draft:
        """The composed reply instead of the model's; with an offer of a person if the
        engine itself is the problem."""
        draft = self._composed(route, specifics, where, trace, why=why)
        if not human:
            return _Draft(draft.reply, draft.faq_ids, "fallback")
        prefix = self.localizer.message("engine_down", where)
        offer = self.localizer.message("handoff_offer", where)
        return _Draft(f"{prefix}\n\n{draft.reply}\n\n{offer}", draft.faq_ids, "fallback")

    def _result(
        self,
        text: str,
        detection: Detection,
        pivot: str | None,
        where: Locality,
        trace: Trace,
        draft: _Draft,
        *,
        answered: bool,
        handoff_reason: str | None = None,
    ) -> TurnResult:
        return TurnResult(
            text=text,
            language=detection.language,
            detection=detection,
            pivot=pivot,
            faq_ids=draft.faq_ids,
            reply=draft.reply,
            handoff=handoff_reason is not None,
            handoff_reason=handoff_reason,
            answered=answered,
            source=draft.source,
            trace=trace,
            locality=where,
            reply_pivot=draft.reply_pivot,
            choices=[{"id": i, "title": self.title(i, where.language)} for i in draft.choices],
        )


RESTATING_CHARS = 40  # a reply whose first this many characters copy a passage restates it


class Restating(Exception):
    """The model is copying a passage word for word: stop it, the curated text follows."""

    def __init__(self, faq_id: str) -> None:
        super().__init__(faq_id)
        self.faq_id = faq_id


class CopyWatch:
    """Whether a reply being written copies one of the passages from its first word.

    A reply that restates the FAQ answer is replaced by the curated text anyway; knowing it
    after ``RESTATING_CHARS`` characters (case, spacing, punctuation and Unicode forms
    aside) saves waiting for the model to write the rest."""

    def __init__(self, passages: Sequence[Passage]) -> None:
        self._openings = [(p.faq_id, normalize(p.text)) for p in passages]
        self.written = ""
        self.pieces = 0

    def feed(self, piece: str) -> str | None:
        """Add a streamed piece; the FAQ id of the passage the reply copies so far, once
        it is long enough. Once it copies none, the rest is only kept."""
        self.written += piece
        self.pieces += 1
        if not self._openings:
            return None
        said = normalize(self.written)
        self._openings = [(id_, text) for id_, text in self._openings if text.startswith(said)]
        if len(said) >= RESTATING_CHARS and self._openings:
            return self._openings[0][0]
        return None


def _similar(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, normalize(a), normalize(b), autojunk=False).ratio()
