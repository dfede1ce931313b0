"""The composed reply's own sentences and the checker's lexicon are right in every language.

knowledge/compose/LL.toml holds, per launch language, the acknowledgement sentences that lead
into a curated FAQ answer, and the lexicon (yes/no words, promise patterns) the automatic checker
uses to gate text written by the language model. These tests read only the TOML files.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
KNOWLEDGE = ROOT / "knowledge"
LANGUAGES = ("en", "zh", "es", "fr", "de", "ja", "ko", "pt", "it", "ru", "ar", "nl")
SLOTTED = ("order", "tracking", "sku", "product", "price")
UNSLOTTED = ("generic", "also")
SLOT = re.compile(r"\{(\w*)\}")
# Scripts written without spaces between words: a yes/no word is a plain prefix there.
NO_SPACES = frozenset({"zh", "ja"})
# A sentence starts at the start of the text, at a new line, or after a full stop, question or
# exclamation mark, semicolon or colon (Latin, Arabic and full-width forms): stricter than the
# checker, which does not cut at colons.
SENTENCE_END = re.compile(r"(?<=[.!?;:。！？；：؟؛])\s*|\n+")
# Opening quotes, brackets and dashes the checker skips before looking for a yes or a no.
LEADING = re.compile(r"^[\s\"'«»„“”‘’¡¿(（「『\-–—*]+")
# Sample values filled into the slots, as a customer might write them.
SAMPLES = {
    "order": "MG-2024-118734",
    "tracking": "1Z999AA10123456784",
    "sku": "TF-42-BLK",
    "product": "TrailFlex",
    "price": "49,95 €",
}

# Promises the checker must catch: natural sentences per language, then two claims of having
# looked the customer's order up (the bot has no access to orders).
PROMISES: dict[str, tuple[str, ...]] = {
    "en": (
        "I'll check the status of your order with the warehouse.",
        "Your refund has been processed and should show up in a few days.",
        "Don't worry, someone from our team will contact you tomorrow.",
        "I can see in our system that your order was delivered on Tuesday.",
        "I couldn't find an order with the number #48213.",
    ),
    "de": (
        "Ich werde Ihre Bestellung gleich mit dem Lager klären.",
        "Ihre Erstattung wurde bereits veranlasst.",
        "Ein Kollege wird sich morgen bei Ihnen melden.",
        "Ich sehe hier, dass Ihre Bestellung bereits zugestellt wurde.",
        "Ich konnte leider keine Bestellung mit der Nummer #48213 finden.",
    ),
    "fr": (
        "Je vais vérifier l'état de votre commande auprès de l'entrepôt.",
        "Votre remboursement a été effectué ce matin.",
        "Un conseiller vous recontactera dans la journée.",
        "J'ai bien trouvé votre commande, elle a été livrée hier.",
        "Je n'ai trouvé aucune commande avec le numéro #48213.",
    ),
    "es": (
        "Voy a revisar el estado de tu pedido con el almacén.",
        "Tu reembolso ya ha sido tramitado.",
        "Alguien de nuestro equipo se pondrá en contacto contigo mañana.",
        "He encontrado tu pedido y veo que ya ha salido de nuestro almacén.",
        "Lo siento, no he encontrado ningún pedido con el número #48213.",
    ),
    "it": (
        "Controllo subito lo stato del tuo ordine.",
        "Il tuo rimborso è già stato elaborato.",
        "Un collega ti contatterà entro domani.",
        "Ho trovato il tuo ordine: vedo che è stato spedito ieri.",
        "Non ho trovato un ordine con il codice #53917.",
    ),
    "pt": (
        "Vou verificar o status do seu pedido com o centro de distribuição.",
        "Seu reembolso já foi processado.",
        "Alguém da nossa equipe vai entrar em contato com você amanhã.",
        "Encontrei o seu pedido e vejo que ele já foi entregue.",
        "Não consegui localizar nenhum pedido com o número #48213.",
    ),
    "nl": (
        "Ik ga het even voor je nakijken bij het magazijn.",
        "Je terugbetaling is inmiddels verwerkt.",
        "Een collega neemt morgen contact met je op.",
        "Ik heb je bestelling gevonden en ik zie dat het pakket gisteren is bezorgd.",
        "Helaas kan ik geen bestelling vinden met het nummer #48213.",
    ),
    "ru": (
        "Сейчас проверю статус вашего заказа на складе.",
        "Ваш возврат уже оформлен, деньги поступят в течение нескольких дней.",
        "Наш сотрудник свяжется с вами завтра.",
        "Я нашла ваш заказ: по нашим данным, посылка уже в пути.",
        "К сожалению, я не нашёл заказ с номером #48213.",
    ),
    "ar": (
        "سأتحقق من حالة طلبكم لدى المستودع.",
        "تم إلغاء طلبكم بنجاح.",
        "سيتواصل معكم أحد أعضاء فريقنا غدًا.",
        "وجدتُ طلبكم، وأرى أن طردكم قد سُلّم أمس.",
        "للأسف، لم أجد أي طلب بالرقم #48213.",
    ),
    "zh": (
        "我马上为您查询订单状态。",
        "您的退款已经处理完毕，请留意账户变动。",
        "稍后会有专人联系您。",
        "我查到了您的订单，系统显示已于昨天发货。",
        "抱歉，我没有找到单号为 #53917 的订单。",
    ),
    "ja": (
        "ただいまご注文の状況をお調べいたします。",
        "ご注文はキャンセルいたしました。",
        "担当者より改めてご連絡いたします。",
        "ご注文を確認いたしましたところ、すでに発送済みとなっております。",
        "申し訳ございませんが、ご注文番号#53917のご注文が見つかりませんでした。",
    ),
    "ko": (
        "주문 상태를 바로 확인해 드리겠습니다.",
        "환불이 완료되었습니다.",
        "담당자가 곧 연락드릴 예정입니다.",
        "확인해 보니 고객님의 주문은 어제 이미 발송되었습니다.",
        "죄송하지만 말씀하신 주문번호 #53917로 된 주문은 없습니다.",
    ),
}


def load(language: str) -> dict[str, Any]:
    """knowledge/compose/LL.toml for one language."""
    with (KNOWLEDGE / "compose" / f"{language}.toml").open("rb") as f:
        return tomllib.load(f)


def curated_answers(language: str) -> list[str]:
    """Every curated FAQ answer the customer may read in this language, market variants included."""
    answers: list[str] = []
    if language == "en":
        for path in sorted((KNOWLEDGE / "faq").glob("*.toml")):
            with path.open("rb") as f:
                entries = tomllib.load(f)["entry"]
            for entry in entries:
                answers.append(entry["answer"])
                answers.extend(m["answer"] for m in entry.get("markets", {}).values())
    else:
        with (KNOWLEDGE / "i18n" / f"{language}.toml").open("rb") as f:
            faq = tomllib.load(f)["faq"]
        for entry in faq.values():
            answers.append(entry["answer"])
            answers.extend(m["answer"] for m in entry.get("markets", {}).values())
    assert answers, language
    return answers


def promises(language: str) -> list[re.Pattern[str]]:
    return [re.compile(p, re.IGNORECASE | re.UNICODE) for p in load(language)["check"]["promise"]]


def filled(language: str) -> dict[str, str]:
    """The acknowledgement templates with sample values in their slots, as the bot fills them."""
    out: dict[str, str] = {}
    for key, text in load(language)["acknowledge"].items():
        for slot, value in SAMPLES.items():
            text = text.replace("{" + slot + "}", value)
        out[key] = text
    return out


def sentence_starts(text: str) -> list[str]:
    return [s for s in (LEADING.sub("", part) for part in SENTENCE_END.split(text)) if s]


def starts_with(sentence: str, word: str, language: str) -> bool:
    """True when the sentence opens with the word (a whole word where words are spaced)."""
    head = sentence.lower()
    if not head.startswith(word):
        return False
    rest = head[len(word) :]
    return language in NO_SPACES or not rest or not (rest[0].isalnum() or rest[0] == "_")


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_key_is_present_and_filled(language: str) -> None:
    """Every language has each acknowledgement and a complete checker lexicon."""
    data = load(language)
    assert data["language"] == language
    assert set(data["acknowledge"]) == {*SLOTTED, *UNSLOTTED}, language
    for key, text in data["acknowledge"].items():
        assert isinstance(text, str) and text.strip() == text and text, (language, key)
    assert set(data["check"]) == {"yes", "no", "promise", "grant", "negation", "states"}, language
    for key in ("yes", "no"):
        words = data["check"][key]
        assert words and len(set(words)) == len(words), (language, key)
        for word in words:
            assert word and word == word.strip() and word == word.lower(), (language, key, word)
    assert 10 <= len(data["check"]["promise"]) <= 20, language


@pytest.mark.parametrize("language", LANGUAGES)
def test_acknowledgements_use_only_their_own_slot(language: str) -> None:
    """An acknowledgement shows what the customer wrote, never a stray or missing placeholder."""
    for key, text in load(language)["acknowledge"].items():
        expected = [key] if key in SLOTTED else []
        assert SLOT.findall(text) == expected, (language, key, text)
        assert text.count("{") == text.count("}") == len(expected), (language, key, text)


@pytest.mark.parametrize("language", LANGUAGES)
def test_acknowledgements_lead_into_the_curated_answer(language: str) -> None:
    """Each acknowledgement ends with a colon, so the curated answer reads as what follows."""
    for key, text in load(language)["acknowledge"].items():
        assert text.endswith((":", "：")), (language, key, text)


@pytest.mark.parametrize("language", LANGUAGES)
def test_promise_patterns_compile(language: str) -> None:
    """The checker can load every promise pattern of every language."""
    for pattern in load(language)["check"]["promise"]:
        try:
            re.compile(pattern, re.IGNORECASE | re.UNICODE)
        except re.error as error:  # pragma: no cover - the message names the broken pattern
            pytest.fail(f"{language}: {pattern!r}: {error}")


@pytest.mark.parametrize("language", LANGUAGES)
def test_acknowledgements_pass_the_checker(language: str) -> None:
    """An acknowledgement never reads as a promise or as a yes/no answer to the customer."""
    check = load(language)["check"]
    for key, text in filled(language).items():
        for pattern in promises(language):
            match = pattern.search(text)
            assert match is None, (language, key, pattern.pattern, match and match.group())
        for sentence in sentence_starts(text):
            for word in (*check["yes"], *check["no"]):
                assert not starts_with(sentence, word, language), (language, key, word, sentence)


@pytest.mark.parametrize("language", LANGUAGES)
def test_promise_patterns_leave_curated_answers_alone(language: str) -> None:
    """A curated FAQ answer, which states policy, is never mistaken for a promise."""
    for answer in curated_answers(language):
        for pattern in promises(language):
            match = pattern.search(answer)
            assert match is None, (language, pattern.pattern, match and match.group(), answer)


@pytest.mark.parametrize("language", LANGUAGES)
def test_promise_patterns_catch_promises(language: str) -> None:
    """A model reply that promises an action ("I'll check", "your refund is done") is stopped."""
    patterns = promises(language)
    for sentence in PROMISES[language]:
        assert any(p.search(sentence) for p in patterns), (language, sentence)
