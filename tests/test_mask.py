"""Placeholders: order numbers, SKUs, prices, URLs, e-mails and brand names are protected."""

from __future__ import annotations

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
