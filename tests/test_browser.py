"""The widget in a real browser: Debian's Chromium driven by Playwright, against a real
server on port 0 (the real pipeline, a fresh SQLite database with the migrations applied).

Needs ``apt-get install -y chromium`` (never ``playwright install``). A screenshot of the
widget is saved to bench/out/widget.png (and widget-ar.png) for a human to look at.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.server.app import App

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("BOT_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = ROOT / "bench" / "out"
FACTOR = float(os.environ.get("BOT_TEST_TIMEOUT_FACTOR", "1"))
WAIT_MS = 30_000 * FACTOR
XSS = "<img src=x onerror=alert(1)><script>alert(2)</script>"


@pytest.fixture
async def app(start: Any) -> AsyncIterator[App]:
    """The real chat server on port 0 with a fresh, migrated SQLite database."""
    async with start() as app:
        yield app


@pytest.fixture(scope="session")
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    return CHROMIUM


@pytest.fixture
async def page(app: App, chromium: Path) -> AsyncIterator[Any]:
    playwright_api = pytest.importorskip("playwright.async_api")
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS
        )
        try:
            context = await browser.new_context(viewport={"width": 1100, "height": 820})
            page = await context.new_page()
            page.set_default_timeout(WAIT_MS)
            yield page
        finally:
            await browser.close()


async def open_widget(page: Any, app: App, lang: str) -> None:
    await page.goto(f"{app.url}/?lang={lang}")
    await page.wait_for_function("window.MeridianChat !== undefined")
    if await page.locator(".mg-panel").is_hidden():
        await page.locator("button.mg-launcher").click()
    await page.locator(".mg-panel").wait_for(state="visible")


async def say(page: Any, text: str) -> Any:
    """Type a message, press Enter, and wait for the bot's answer to it: its bubble."""
    replies = page.locator('.mg-msg[data-role="bot"]:not([data-state])')
    before = await replies.count()
    await page.locator("textarea.mg-input").fill(text)
    await page.locator("textarea.mg-input").press("Enter")
    await page.wait_for_function(
        "n => document.querySelectorAll('.mg-msg[data-role=\"bot\"]:not([data-state])').length > n",
        arg=before,
    )
    # The log follows the conversation: it ends up scrolled to the new reply.
    await page.wait_for_function(
        "() => { const l = document.querySelector('.mg-log');"
        " return l.scrollHeight - l.scrollTop - l.clientHeight < 2; }"
    )
    return replies.nth(before)


async def test_chat_in_two_languages_reload_rtl_and_no_html(app: App, page: Any) -> None:
    """A customer chats in Spanish and German, reloads and sees the history, switches to
    Arabic (right-to-left) and sends HTML, which is shown as text and never run."""
    dialogs: list[str] = []

    async def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", on_dialog)

    await open_widget(page, app, "es")
    spanish = await say(page, "¿Cómo puedo devolver un artículo?")
    assert await spanish.get_attribute("lang") == "es"
    assert "devol" in (await spanish.locator(".mg-text").text_content() or "")
    sources = spanish.locator(".mg-sources")
    assert await sources.get_attribute("data-faq-ids") == "returns.start"
    shown = await sources.locator(".mg-source").text_content() or ""
    assert "returns.start" not in shown and "¿" in shown  # the Spanish title, not the id
    german = await say(page, "Wie kann ich einen Artikel zurückgeben?")
    assert await german.get_attribute("lang") == "de"
    assert "zurück" in (await german.locator(".mg-text").text_content() or "").lower()
    customer = page.locator('.mg-msg[data-role="customer"]')
    assert await customer.evaluate_all("ns => ns.map(n => n.dataset.state)") == ["sent", "sent"]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / "widget.png"))
    before = await page.locator(".mg-log .mg-msg").evaluate_all(
        "ns => ns.map(n => [n.dataset.role, n.querySelector('.mg-text').textContent])"
    )

    await page.reload()  # the conversation comes back from the server's replay
    await page.locator(".mg-panel").wait_for(state="visible")
    await page.wait_for_function(
        "n => document.querySelectorAll('.mg-log .mg-msg').length >= n", arg=len(before)
    )
    after = await page.locator(".mg-log .mg-msg").evaluate_all(
        "ns => ns.map(n => [n.dataset.role, n.querySelector('.mg-text').textContent])"
    )
    assert after == before

    await open_widget(page, app, "ar")
    root = page.locator("#mg-chat")
    assert await root.get_attribute("dir") == "rtl"
    assert await root.get_attribute("lang") == "ar"
    direction = await page.locator(".mg-panel").evaluate("n => getComputedStyle(n).direction")
    assert direction == "rtl"
    arabic = await say(page, "كم تكلفة الشحن إلى دبي؟")  # a new question: not a third rephrasing
    assert await arabic.get_attribute("lang") == "ar"

    await say(page, XSS)
    mine = page.locator('.mg-msg[data-role="customer"]').last
    assert await mine.locator(".mg-text").text_content() == XSS
    assert await page.locator("#mg-chat img, #mg-chat script").count() == 0
    assert await page.evaluate("document.querySelectorAll('img').length") == 0
    await page.screenshot(path=str(SCREENSHOTS / "widget-ar.png"))
    assert dialogs == []
