"""The clarify buttons in a real browser (Debian's Chromium through Playwright) against a
real server on port 0; fixtures and helpers from tests/test_browser.py."""

from __future__ import annotations

from typing import Any

import pytest

from bot.localize import locality_for
from bot.pipeline import Pipeline
from bot.server.app import App
from tests.test_browser import app, chromium, open_widget, page, say  # noqa: F401
from tests.test_clarify import clarifying

pytestmark = [pytest.mark.browser, pytest.mark.slow]
BOT_REPLIES = '.mg-msg[data-role="bot"]:not([data-state])'


async def test_clarify_buttons_render_and_a_click_gets_that_answer(
    app: App,  # noqa: F811
    page: Any,  # noqa: F811
    pipeline: Pipeline,
) -> None:
    """A Spanish customer whose question fits two entries sees one button per entry,
    titled in Spanish; clicking one shows that title as their message, disables the
    buttons, and the bot answers with that entry's curated answer."""
    await open_widget(page, app, "es")
    question = await say(page, clarifying(pipeline, "es"))
    assert await question.locator(".mg-text").text_content() == pipeline.knowledge.message(
        "clarify_choices", "es"
    )
    buttons = question.locator(".mg-choices button.mg-choice")
    assert await buttons.count() == 2
    ids = await buttons.evaluate_all("bs => bs.map(b => b.dataset.faqId)")
    titles = await buttons.evaluate_all("bs => bs.map(b => b.textContent)")
    assert titles == [pipeline.title(faq_id, "es") for faq_id in ids]

    replies = page.locator(BOT_REPLIES)
    before = await replies.count()
    await buttons.nth(1).click()
    await page.wait_for_function(
        "([sel, n]) => document.querySelectorAll(sel).length > n", arg=[BOT_REPLIES, before]
    )
    answer = replies.nth(before)
    where = locality_for(pipeline.knowledge, "es", locale_hint="es")
    assert await answer.locator(".mg-text").text_content() == pipeline.localizer.curated(
        ids[1], where
    )
    assert await answer.locator(".mg-sources").get_attribute("data-faq-ids") == ids[1]
    mine = page.locator('.mg-msg[data-role="customer"]').last
    assert await mine.locator(".mg-text").text_content() == titles[1]
    assert await mine.get_attribute("data-state") == "sent"
    assert await buttons.evaluate_all("bs => bs.map(b => b.disabled)") == [True, True]
    assert await buttons.nth(1).get_attribute("aria-pressed") == "true"
