"""When a human must take over.

Reasons, in order: the customer asks for a person (in any launch language), a sensitive
topic (fraud, chargeback, legal threat, safety), repeated turns without an answer, or
visible frustration. The server enforces ownership once an agent holds the conversation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Words that ask for a person, per language; matched on the original text, case-folded.
_HUMAN = {
    "en": r"\b(human|real person|a person|someone real|agent|representative|operator|live chat|talk to (?:someone|somebody)|customer service rep)\b",
    "de": r"\b(mensch|menschen|mitarbeiter(?:in)?|echte[nr]? person|kundenberater|support-mitarbeiter)\b",
    "fr": r"\b(humain|conseill(?:er|ère)|une personne|un agent|opérateur|quelqu'un de réel)\b",
    "es": r"\b(humano|persona real|una persona|agente|asesor|operador)\b",
    "it": r"\b(operatore|persona reale|una persona|umano|assistente umano)\b",
    "pt": r"\b(atendente|humano|pessoa real|uma pessoa|agente)\b",
    "nl": r"\b(medewerker|mens|echt persoon|een persoon)\b",
    "ru": r"(оператор|человек|живой|сотрудник|консультант)",
    "ar": r"(موظف|شخص|إنسان|انسان|بشري|خدمة العملاء)",
    "zh": r"(人工|真人|客服人员|转人工)",
    "ja": r"(オペレーター|担当者|人間|有人)",
    "ko": r"(상담원|상담사|사람|직원)",
}  # fmt: skip
_SENSITIVE = re.compile(
    r"\b(fraud|scam|stolen card|chargeback|charge back|lawyer|lawsuit|sue you|police|identity theft|hacked|unauthori[sz]ed (?:charge|payment|transaction)|injur(?:y|ed)|fire hazard|burned)\b",
    re.I,
)
_FRUSTRATION = re.compile(
    r"\b(useless|ridiculous|this is a joke|terrible service|worst|not helpful|you're not helping|stupid bot|waste of time)\b|!!!|\?\?\?",
    re.I,
)
_HUMAN_RE = {lang: re.compile(p, re.I) for lang, p in _HUMAN.items()}
HUMAN_FAQ = "contact.human"


@dataclass(frozen=True)
class HandoffDecision:
    handoff: bool
    reason: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {"handoff": self.handoff, "reason": self.reason}


def decide(
    *,
    original: str,
    language: str,
    pivot: str | None,
    top_faq: str | None,
    answered: bool,
    no_answer_streak: int,
    max_no_answer: int = 2,
) -> HandoffDecision:
    """Decide whether this turn hands the conversation to a human."""
    english = pivot or ""
    asks_human = any(
        rx.search(text)
        for rx, text in ((_HUMAN_RE.get(language), original), (_HUMAN_RE["en"], english))
        if rx is not None
    )
    if asks_human or top_faq == HUMAN_FAQ:
        return HandoffDecision(True, "customer_request")
    if _SENSITIVE.search(english) or _SENSITIVE.search(original):
        return HandoffDecision(True, "sensitive_topic")
    if not answered and no_answer_streak + 1 >= max_no_answer:
        return HandoffDecision(True, "no_answer")
    if _FRUSTRATION.search(english) or _FRUSTRATION.search(original):
        return HandoffDecision(True, "frustration")
    return HandoffDecision(False)
