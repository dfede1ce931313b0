"""Placeholders: order numbers, SKUs, prices, URLs, e-mails and brand names are protected."""

from __future__ import annotations

import time

import pytest

from bot.mask import Masker, unmask

GLOSSARY = ["Meridian Goods", "MeriPoints", "TrailFlex"]


@pytest.mark.parametrize(
    ("text", "kind", "span"),
    [
        ("¿Dónde está mi pedido #48213?", "order", "#48213"),
        ("Bestellung ORD-2024-88123 fehlt", "order", "ORD-2024-88123"),
        ("I need size 4471-XL", "sku", "4471-XL"),
        ("It cost €49.90", "price", "€49.90"),
        ("J'ai payé 1.299,50 € hier", "price", "1.299,50 €"),
        ("charged $1,299.00 twice", "price", "$1,299.00"),
        ("mail me at jane.doe@example.com please", "email", "jane.doe@example.com"),
        ("see https://meridiangoods.com/returns.", "url", "https://meridiangoods.com/returns"),
        ("tracking 1Z999AA10123456784 says nothing", "tracking", "1Z999AA10123456784"),
        ("Wie viele MeriPoints habe ich?", "term", "MeriPoints"),
    ],
)
def test_spans_are_found(text: str, kind: str, span: str) -> None:
    """Each kind of protected span is recognised in running text."""
    spans = Masker(GLOSSARY).find(text)
    assert (kind, span) in [(s.kind, s.text) for s in spans]


def test_mask_and_unmask_round_trip() -> None:
    """Masked text carries numbered tokens; restoring gives the original back."""
    masker = Masker(GLOSSARY)
    masked = masker.mask("Order #48213 (TrailFlex, €49.90) went to jane@example.com")
    assert "48213" not in masked.text and "{1}" in masked.text
    assert (
        unmask(masked.text, masked) == "Order #48213 (TrailFlex, €49.90) went to jane@example.com"
    )


def test_translation_that_loses_a_placeholder_is_rejected() -> None:
    """A translation must keep every token exactly once."""
    masked = Masker().mask("Pedido #48213 por €49.90")
    with pytest.raises(ValueError, match="missing"):
        unmask("Order {1} for", masked)
    with pytest.raises(ValueError, match="repeated"):
        unmask("Order {1} {1} {2}", masked)


def test_tokens_in_other_brackets_are_accepted() -> None:
    """Models sometimes rewrite {1} as [1] or 【1】 (Chinese); both restore."""
    masked = Masker().mask("订单 #48213")
    assert unmask("Order 【1】", masked) == "Order #48213"
    assert unmask("Order [1]", masked) == "Order #48213"


# -- bare order numbers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Wo ist meine Bestellung 48213?",
        "my order 48213 arrived",
        "Order number: 48213",
        "Mi pedido 48213",
        "ma commande 48213",
        "n° de commande : 48213",
        "il mio ordine 48213",
        "minha encomenda 48213",
        "meu pedido 48213",
        "mijn bestelling 48213",
        "мой заказ 48213",
        "номер заказа 48213",
        "订单48213",
        "订单号 48213",
        "我的订单号是48213",
        "注文番号48213",
        "注文 48213",
        "주문 48213",
        "주문번호는 48213입니다",
        "طلبي رقم 48213",
        "الطلب 48213",
    ],
)
def test_a_bare_number_after_an_order_word_is_an_order(text: str) -> None:
    """'my order 48213' in any launch language: the number alone is protected as an order."""
    masked = Masker(GLOSSARY).mask(text)
    assert [(s.kind, s.text) for s in masked.spans] == [("order", "48213")]
    assert masked.text == text.replace("48213", "{1}")


def test_bare_order_numbers_keep_their_own_digits_and_marks() -> None:
    """Arabic-Indic digits stay as written; '#48213' keeps its '#'; 12 digits are an order."""
    masker = Masker()
    assert [(s.kind, s.text) for s in masker.find("رقم الطلب ٤٨٢١٣")] == [("order", "٤٨٢١٣")]
    assert [(s.kind, s.text) for s in masker.find("order #48213")] == [("order", "#48213")]
    found = masker.find("Order number 123456789012")
    assert [(s.kind, s.text) for s in found] == [("order", "123456789012")]


@pytest.mark.parametrize(
    "text",
    [
        "I am 1990 cm",
        "Does this fit a person who is 1.90 m?",
        "I have been a customer since 2023",
        "I ordered 2000 pieces",
        "It is on the border 12345",
        "my order 123 arrived",
    ],
)
def test_numbers_without_an_order_word_are_left_alone(text: str) -> None:
    """Heights, years and counts are not order numbers: nothing is masked."""
    assert Masker(GLOSSARY).find(text) == []


def test_an_order_word_does_not_take_over_other_spans() -> None:
    """After an order word, a price stays a price and a URL stays a URL."""
    masker = Masker(GLOSSARY)
    assert [(s.kind, s.text) for s in masker.find("order 1299,50 € twice")] == [
        ("price", "1299,50 €")
    ]
    url = "https://meridiangoods.com/order/48213"
    assert [(s.kind, s.text) for s in masker.find(f"see {url} now")] == [("url", url)]
    found = masker.find("order TrailFlex 48213")
    assert [(s.kind, s.text) for s in found] == [("term", "TrailFlex"), ("order", "48213")]


def test_an_amount_is_protected_whole() -> None:
    """'$1234' is one amount (not '$123' and a stray '4')."""
    assert [(s.kind, s.text) for s in Masker().find("It cost $1234")] == [("price", "$1234")]


# -- linear time -----------------------------------------------------------------------------

# Texts that made the earlier patterns backtrack quadratically (a 2,000-character message
# of digits took 200 ms to mask), and the shapes every pattern scans: each as a function
# of the length n.
WORST_CASES = {
    "digits": lambda n: "1" * n,
    "digit groups": lambda n: ("111 " * n)[:n],
    "thousands": lambda n: ("111," * n)[:n],
    "dotted digits": lambda n: ("1.1." * n)[:n],
    "digit space": lambda n: ("1 " * n)[:n],
    "hash digits": lambda n: "#" + "1" * (n - 1),
    "dotted words": lambda n: ("a." * n)[:n],
    "at signs": lambda n: ("a@" * n)[:n],
    "domain": lambda n: "a@" + ("b." * n)[: n - 3] + "-",
    "url": lambda n: "https://" + ("a/" * n)[: n - 8],
    "url dots": lambda n: "http://" + "." * (n - 7),
    "order codes": lambda n: "ORD-" + ("1-" * n)[: n - 4],
    "currency": lambda n: ("$1 " * n)[:n],
    "order words": lambda n: ("Bestellung Nr " * n)[:n],
    "order stems": lambda n: ("订单号" * n)[:n],
    "mixed scripts": lambda n: ("Hello 你好 مرحبا Привет order 1234 € " * n)[:n],
}


def _seconds(masker: Masker, text: str, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        masker.mask(text)
        best = min(best, time.perf_counter() - started)
    return best


@pytest.mark.parametrize("case", WORST_CASES)
def test_masking_a_long_message_takes_linear_time(case: str) -> None:
    """Ten times the text takes about ten times as long (a quadratic pattern: a hundred)."""
    masker = Masker(GLOSSARY)
    make = WORST_CASES[case]
    short, long = make(2_000), make(20_000)
    ratio = _seconds(masker, long) / _seconds(masker, short)
    assert ratio < 30, f"{case}: 10x the text took {ratio:.0f}x the time"


@pytest.mark.parametrize("case", WORST_CASES)
def test_worst_case_messages_mask_and_restore(case: str) -> None:
    """A 2,000-character message of any shape comes back unchanged through mask and unmask."""
    masked = Masker(GLOSSARY).mask(WORST_CASES[case](2_000))
    assert unmask(masked.text, masked) == WORST_CASES[case](2_000)
