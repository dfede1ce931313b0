"""``bot finetune data``: the fine-tuning dataset, built exactly as ``generate`` prompts.

Every example is a chat (system, user, assistant) whose system and user messages come from
``bot.generate.build_messages`` with the passages the pipeline would pass for that turn
(``Pipeline._generated``: the curated localized answer in the customer's language, the
English answer rendered for the market in English). Sources:

- ``faq``: each question variant of each FAQ entry in each launch language -> that entry's
  curated answer in the language, cited ``[faq.id]``;
- ``conversation``: customer turns an agent answered with a reply they approved (the console's
  "approve" stores it as a translation-memory pair), PII removed (bot/redact.py);
- ``refusal``: off-topic (knowledge/out_of_scope.toml) and sensitive questions
  (``sensitive.toml``) beside an unrelated passage -> the bot's own offer of a person;
- ``specifics``: a question carrying an order number, SKU or amount -> the composer's
  acknowledgement naming it exactly + the curated answer.

The split is by FAQ id (sha256 order, fixed fractions): a test entry's questions, answers and
passages never appear in training or validation. Refusals split by their text's digest.
Duplicates (same language and normalized question) keep the copy in the most held-out split.
"""

from __future__ import annotations

import hashlib
import json
import random
import tomllib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bot.compose import ComposeTexts, load_compose
from bot.config import Config
from bot.faithful import split_sentences
from bot.generate import Passage, build_messages
from bot.knowledge import Knowledge, load_knowledge
from bot.localize import Locality, Localizer, locality_for
from bot.mask import Masker
from bot.translate import LANGUAGE_NAMES, normalize

SPLITS = ("train", "validation", "test")
SOURCES = ("faq", "conversation", "refusal", "specifics")
TEST_FRACTION = 0.15
VALIDATION_FRACTION = 0.10
SENSITIVE_FILE = Path(__file__).with_name("sensitive.toml")
_UNSPACED = frozenset({"zh", "ja"})

# A sentence that carries the customer's own order number, SKU or amount, per language:
# (order, sku, price).
_CARRIER_TEXTS: dict[str, tuple[str, str, str]] = {
    "en": ("My order number is {v}.", "It's about item {v}.", "I paid {v}."),
    "de": ("Meine Bestellnummer ist {v}.", "Es geht um Artikel {v}.", "Ich habe {v} bezahlt."),
    "fr": (
        "Mon numéro de commande est le {v}.",
        "Il s'agit de l'article {v}.",
        "J'ai payé {v}.",
    ),
    "es": ("Mi número de pedido es {v}.", "Se trata del artículo {v}.", "Pagué {v}."),
    "it": (
        "Il mio numero d'ordine è {v}.",
        "Si tratta dell'articolo {v}.",
        "Ho pagato {v}.",
    ),
    "pt": ("O número do meu pedido é {v}.", "É sobre o item {v}.", "Paguei {v}."),
    "nl": ("Mijn bestelnummer is {v}.", "Het gaat om artikel {v}.", "Ik heb {v} betaald."),
    "ru": ("Номер моего заказа {v}.", "Речь об артикуле {v}.", "Я заплатил {v}."),
    "ar": ("رقم طلبي هو {v}.", "الأمر يتعلق بالمنتج {v}.", "دفعت {v}."),
    "zh": ("我的订单号是{v}。", "是关于商品{v}的。", "我付了{v}。"),
    "ja": ("注文番号は{v}です。", "商品{v}についてです。", "{v}支払いました。"),
    "ko": ("제 주문 번호는 {v}입니다.", "상품 {v} 관련입니다.", "{v}을 결제했어요."),
}
_CARRIERS = {
    lang: dict(zip(("order", "sku", "price"), texts, strict=True))
    for lang, texts in _CARRIER_TEXTS.items()
}
_PRICES = {
    "en": "${a}.90",
    "de": "{a},90 €",
    "fr": "{a},90 €",
    "es": "{a},90 €",
    "it": "{a},90 €",
    "pt": "R$ {a},90",
    "nl": "€ {a},90",
    "ru": "{a}90 ₽",
    "ar": "{a}9 AED",
    "zh": "{a}9元",
    "ja": "{a}80円",
    "ko": "{a},000원",
}
_SPECIFIC_KIND = {"products": "sku", "warranty": "sku", "payments": "price", "refunds": "price"}


@dataclass(frozen=True)
class Example:
    id: str
    split: str
    source: str  # faq | conversation | refusal | specifics
    language: str
    market: str
    question: str
    messages: list[dict[str, str]]
    faq_id: str | None = None  # the entry that answers it (None: refusal)
    reference: str = ""  # the curated answer in the language (chrF reference)
    expect: str = "answer"  # answer | refuse
    specifics: list[str] = field(default_factory=list)  # must survive verbatim

    @property
    def reply(self) -> str:
        return self.messages[-1]["content"]

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Example:
        return cls(**raw)


@dataclass(frozen=True)
class ApprovedTurn:
    """A customer message and the agent reply approved for it (already redacted)."""

    conversation: str
    language: str
    question: str
    reply: str
    faq_ids: tuple[str, ...]


@dataclass
class Dataset:
    examples: list[Example]
    dropped_duplicates: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # source -> why

    def split(self, name: str) -> list[Example]:
        return [e for e in self.examples if e.split == name]

    def card(self) -> dict[str, Any]:
        by: dict[str, Counter[str]] = {s: Counter() for s in SPLITS}
        for e in self.examples:
            by[e.split][f"{e.language}/{e.source}"] += 1
        languages = sorted({e.language for e in self.examples})
        return {
            "examples": len(self.examples),
            "per_split": {s: sum(by[s].values()) for s in SPLITS},
            "faq_ids": {s: sorted({e.faq_id for e in self.split(s) if e.faq_id}) for s in SPLITS},
            "per_language_source": {
                s: {lang: {src: by[s][f"{lang}/{src}"] for src in SOURCES} for lang in languages}
                for s in SPLITS
            },
            "dropped_duplicates": self.dropped_duplicates,
            "skipped": self.skipped,
        }


def split_faq_ids(faq_ids: Iterable[str]) -> dict[str, str]:
    """FAQ id -> split: ids in sha256 order, the first 15 % test, the next 10 % validation."""
    ordered = sorted(set(faq_ids), key=lambda f: hashlib.sha256(f.encode()).hexdigest())
    n_test = max(1, round(len(ordered) * TEST_FRACTION))
    n_val = max(1, round(len(ordered) * VALIDATION_FRACTION))
    out = {}
    for i, faq_id in enumerate(ordered):
        out[faq_id] = "test" if i < n_test else "validation" if i < n_test + n_val else "train"
    return out


def _text_split(text: str) -> str:
    bucket = int(hashlib.sha256(normalize(text).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    if bucket < TEST_FRACTION:
        return "test"
    return "validation" if bucket < TEST_FRACTION + VALIDATION_FRACTION else "train"


class Builder:
    """Builds the examples from the knowledge base (and approved conversations)."""

    def __init__(self, config: Config, knowledge: Knowledge | None = None) -> None:
        self.config = config
        self.knowledge = knowledge or load_knowledge(config.shop.knowledge_dir)
        self.localizer = Localizer(self.knowledge)
        self.masker = Masker(self.knowledge.glossary)
        self.languages = tuple(config.shop.languages)
        self.pivot = config.shop.pivot
        self.compose: dict[str, ComposeTexts] = load_compose(
            config.shop.knowledge_dir, self.languages
        )
        self.splits = split_faq_ids(self.knowledge.entries)
        self.shop = str(self.knowledge.shop.get("name", "the shop"))

    # -- prompts, as the pipeline builds them ---------------------------------------------

    def where(self, language: str) -> Locality:
        return locality_for(self.knowledge, language, locale_hint=language)

    def passage(self, faq_id: str, where: Locality) -> str:
        """The passage text ``Pipeline._generated`` passes for ``faq_id`` in this locality."""
        if where.language != self.pivot:
            curated = self.localizer.curated(faq_id, where)
            if curated is not None:
                return curated
        english = locality_for(self.knowledge, self.pivot, market=where.market)
        answer = self.knowledge.entry(faq_id).answer.for_market(where.market)
        return self.localizer.render(answer, english)

    def prompt(
        self, question: str, faq_ids: Sequence[str], where: Locality
    ) -> list[dict[str, str]]:
        language = where.language
        settings = self.knowledge.languages.get(language)
        messages = build_messages(
            self.shop,
            [Passage(f, self.passage(f, where)) for f in faq_ids],
            question,
            language=LANGUAGE_NAMES.get(language, language),
            register=settings.pronoun if settings and language != self.pivot else None,
        )
        return [dict(m) for m in messages]

    def cited(self, answer: str, faq_id: str, language: str) -> str:
        """The curated answer as the reply: one citation after its last sentence."""
        sentences = split_sentences(answer.strip())
        joiner = "" if language in _UNSPACED else " "
        return joiner.join(sentences) + f" [{faq_id}]"

    # -- sources ----------------------------------------------------------------------------

    def faq_examples(self) -> list[Example]:
        out = []
        for faq_id in self.knowledge.entries:
            split = self.splits[faq_id]
            for language in self.languages:
                where = self.where(language)
                answer = self.passage(faq_id, where)
                for question in self._questions(faq_id, language):
                    out.append(
                        self._example(
                            split, "faq", where, question, [faq_id],
                            self.cited(answer, faq_id, language), faq_id, answer,
                        )
                    )  # fmt: skip
        return out

    def specifics_examples(self) -> list[Example]:
        out = []
        for faq_id, entry in self.knowledge.entries.items():
            split = self.splits[faq_id]
            for language in self.languages:
                carriers = _CARRIERS.get(language)
                questions = self._questions(faq_id, language)
                if not carriers or not questions:
                    continue
                rng = random.Random(f"{faq_id}/{language}")
                kind = _SPECIFIC_KIND.get(entry.topic, "order")
                value = {
                    "order": f"#{rng.randint(10000, 99999)}",
                    "sku": f"{rng.choice(['CK', 'HN', 'MG', 'TR'])}-{rng.randint(1000, 9999)}",
                    "price": _PRICES[language].format(a=rng.randint(2, 9) * 10 + rng.randint(1, 9)),
                }[kind]
                question = rng.choice(questions).rstrip()
                joiner = "" if language in _UNSPACED else " "
                text = question + joiner + carriers[kind].format(v=value)
                spans = [s for s in self.masker.find(text) if s.text == value]
                if not spans:  # the masker would not protect it: not a useful example
                    continue
                where = self.where(language)
                answer = self.passage(faq_id, where)
                # The gate lets a reply repeat the customer's order and SKU numbers, never
                # their amounts (not policy facts): those get the generic acknowledgement.
                keep = [] if kind == "price" else [value]
                ack = self.compose[language].acknowledgement(spans if keep else [])
                reply = ack + "\n\n" + self.cited(answer, faq_id, language)
                out.append(
                    self._example(
                        split, "specifics", where, text, [faq_id], reply, faq_id, answer,
                        specifics=keep,
                    )
                )  # fmt: skip
        return out

    def refusal_examples(self) -> list[Example]:
        by_split: dict[str, list[str]] = {s: [] for s in SPLITS}
        for faq_id, split in sorted(self.splits.items()):
            by_split[split].append(faq_id)
        out = []
        for kind, questions in (
            ("no_answer", _per_language(self.config.shop.knowledge_dir / "out_of_scope.toml")),
            ("handoff_offer", _per_language(SENSITIVE_FILE)),
        ):
            for language, texts in questions.items():
                if language not in self.languages:
                    continue
                where = self.where(language)
                reply = self.localizer.message(kind, where)
                for text in texts:
                    split = _text_split(text)
                    pool = by_split[split]
                    distractor = pool[
                        int(hashlib.sha256(text.encode()).hexdigest(), 16) % len(pool)
                    ]
                    out.append(
                        self._example(
                            split, "refusal", where, text, [distractor], reply, None, "",
                            expect="refuse",
                        )
                    )  # fmt: skip
        return out

    def conversation_examples(self, turns: Sequence[ApprovedTurn]) -> list[Example]:
        out = []
        for turn in turns:
            known = [f for f in turn.faq_ids if f in self.knowledge.entries]
            if not known or turn.language not in self.languages:
                continue
            where = self.where(turn.language)
            # the most held-out split among the turn's entries: a test entry stays unseen
            split = max((self.splits[f] for f in known), key=SPLITS.index)
            reply = turn.reply.strip() + f" [{known[0]}]"
            answer = self.passage(known[0], where)
            out.append(
                self._example(
                    split, "conversation", where, turn.question, known[:2], reply, known[0], answer
                )
            )
        return out

    # -- helpers ----------------------------------------------------------------------------

    def _questions(self, faq_id: str, language: str) -> list[str]:
        if language == self.pivot:
            return list(self.knowledge.entry(faq_id).questions)
        localized = self.knowledge.i18n.get(language)
        entry = localized.faq.get(faq_id) if localized else None
        return list(entry.questions) if entry else []

    def _example(
        self,
        split: str,
        source: str,
        where: Locality,
        question: str,
        faq_ids: Sequence[str],
        reply: str,
        faq_id: str | None,
        reference: str,
        *,
        expect: str = "answer",
        specifics: Sequence[str] = (),
    ) -> Example:
        messages = self.prompt(question, faq_ids, where)
        messages.append({"role": "assistant", "content": reply})
        digest = hashlib.sha256(
            json.dumps([source, where.language, question, faq_ids], ensure_ascii=False).encode()
        ).hexdigest()[:16]
        return Example(
            id=digest,
            split=split,
            source=source,
            language=where.language,
            market=where.market,
            question=question,
            messages=messages,
            faq_id=faq_id,
            reference=reference,
            expect=expect,
            specifics=list(specifics),
        )


def build_dataset(
    config: Config,
    approved: Sequence[ApprovedTurn] | None,
    *,
    knowledge: Knowledge | None = None,
) -> Dataset:
    """Every example, split and deduplicated; ``approved`` None: no database to read."""
    builder = Builder(config, knowledge)
    examples = builder.faq_examples() + builder.specifics_examples()
    skipped: dict[str, str] = {}
    if approved is None:
        skipped["conversation"] = "no database"
    elif not approved:
        skipped["conversation"] = "no agent-approved replies stored"
    else:
        examples += builder.conversation_examples(approved)
    examples += builder.refusal_examples()
    return deduplicate(examples, skipped)


def deduplicate(examples: list[Example], skipped: dict[str, str]) -> Dataset:
    """One example per (language, normalized question); the most held-out split wins, then
    the first source (faq before conversation), then the id."""
    ranked = sorted(
        examples,
        key=lambda e: (-SPLITS.index(e.split), SOURCES.index(e.source), e.id),
    )
    seen: set[tuple[str, str]] = set()
    kept = []
    for e in ranked:
        key = (e.language, normalize(e.question))
        if key in seen:
            continue
        seen.add(key)
        kept.append(e)
    kept.sort(key=lambda e: (SPLITS.index(e.split), e.source, e.language, e.id))
    return Dataset(kept, dropped_duplicates=len(examples) - len(kept), skipped=skipped)


def write_dataset(dataset: Dataset, out: Path) -> list[Path]:
    """``train.jsonl``, ``validation.jsonl``, ``test.jsonl`` and ``card.json`` + ``card.md``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for split in SPLITS:
        path = out / f"{split}.jsonl"
        lines = [json.dumps(e.as_json(), ensure_ascii=False) for e in dataset.split(split)]
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        paths.append(path)
    card = dataset.card()
    (out / "card.json").write_text(json.dumps(card, indent=1, ensure_ascii=False) + "\n")
    (out / "card.md").write_text(card_markdown(card), encoding="utf-8")
    return [*paths, out / "card.json", out / "card.md"]


def read_split(directory: Path, split: str) -> list[Example]:
    path = directory / f"{split}.jsonl"
    with path.open(encoding="utf-8") as f:
        return [Example.from_json(json.loads(line)) for line in f if line.strip()]


def card_markdown(card: dict[str, Any]) -> str:
    lines = [
        "# Fine-tuning data card",
        "",
        f"{card['examples']} examples: "
        + ", ".join(f"{s} {n}" for s, n in card["per_split"].items())
        + f"; {card['dropped_duplicates']} duplicates dropped.",
        "",
        "Split by FAQ id: test entries " + ", ".join(card["faq_ids"]["test"]) + ".",
        "",
    ]
    for source, why in card["skipped"].items():
        lines.append(f"Source `{source}` skipped: {why}.")
    for split, table in card["per_language_source"].items():
        lines += ["", f"## {split}", "", "| language | " + " | ".join(SOURCES) + " |"]
        lines.append("|---" * (len(SOURCES) + 1) + "|")
        for lang, counts in table.items():
            lines.append(f"| {lang} | " + " | ".join(str(counts[s]) for s in SOURCES) + " |")
    return "\n".join(lines) + "\n"


def _per_language(path: Path) -> dict[str, list[str]]:
    if not path.exists():
        return {}
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    table = data.get("examples", data)
    return {str(k): [str(t) for t in v] for k, v in table.items() if isinstance(v, list)}
