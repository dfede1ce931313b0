"""The agent console with a long queue: how fast Chromium renders 200 waiting conversations.

    .venv/bin/python bench/bench_console.py [--conversations 200] [--renders 30]

1. A fresh SQLite database (migrations applied) is seeded through the store with
   ``--conversations`` conversations handed off to a person, in the 12 launch languages,
   each with a customer message (the queue's preview line) and a handoff reason; and one
   agent account.
2. One ``bot serve --no-engine`` process serves it; Debian's Chromium (headless, through
   Playwright, never ``playwright install``) opens ``/console`` and logs in with the form.
3. Timed in the page (``performance.now()``), by wrapping the console socket's
   ``onmessage``: the first ``queue`` frame's render (the console's own ``renderQueue``:
   building the list) and the layout it forces, then the next animation frame (paint);
   then the same frame re-rendered ``--renders`` times (median and p95). Also the time from
   the login click to the frame's arrival (login, socket, hello, the server's queue query).

Prints the figures; exit status 1 when the first render or the median re-render (script +
layout) takes 200 ms or more, or the list does not show every conversation.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.auth import hash_password  # noqa: E402
from bot.config import DatabaseConfig  # noqa: E402
from bot.store import Store  # noqa: E402

CHROMIUM = Path(os.environ.get("BOT_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
PASSWORD = "bench console password"
BUDGET_MS = 200.0
# What customers wrote before asking for a person (the queue's preview line).
MESSAGES = {
    "en": "Where is my order #48213? It's been two weeks!",
    "zh": "我的订单 #48213 到底在哪里？已经两个星期了！",
    "es": "¿Dónde está mi pedido #48213? ¡Ya han pasado dos semanas!",
    "fr": "Où est ma commande #48213 ? Cela fait deux semaines !",
    "de": "Wo bleibt meine Bestellung #48213? Das sind jetzt zwei Wochen!",
    "ja": "注文 #48213 はどこですか？もう2週間になります。",
    "ko": "주문 #48213은 어디에 있나요? 벌써 2주가 지났어요!",
    "pt": "Cadê meu pedido #48213? Já faz duas semanas!",
    "it": "Dov'è il mio ordine #48213? Sono passate due settimane!",
    "ru": "Где мой заказ #48213? Прошло уже две недели!",
    "ar": "أين طلبي #48213؟ لقد مرّ أسبوعان!",
    "nl": "Waar blijft mijn bestelling #48213? Het is al twee weken!",
}
REASONS = ("explicit_request", "frustration", "no_answer", "sensitive:fraud", "rephrased")

# Wraps the console socket's onmessage: times each queue frame's render (script), the
# layout it forces and the next animation frame; keeps the frame to re-render it.
INIT_SCRIPT = """
(() => {
  const B = window.__bench = { renders: [], clickAt: null, firstAt: null, frame: null };
  const Native = window.WebSocket;
  function timed(handler, event) {
    const t0 = performance.now();
    handler.call(B.ws, event);
    const t1 = performance.now();
    void document.body.offsetHeight;  // the layout the new list needs
    const t2 = performance.now();
    return new Promise((resolve) => requestAnimationFrame(() => {
      const t3 = performance.now();
      resolve({ script: t1 - t0, layout: t2 - t0, frame: t3 - t0 });
    }));
  }
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      B.ws = this;
      let handler = null;
      // The console sets ws.onmessage: keep it here and call it from our own listener.
      Object.defineProperty(this, 'onmessage', {
        configurable: true,
        get() { return handler; },
        set(fn) { handler = fn; },
      });
      this.addEventListener('message', (event) => {
        if (!handler) return;
        let queue = false;
        try { queue = JSON.parse(event.data).type === 'queue'; } catch (e) { /* not JSON */ }
        if (!queue) { handler.call(this, event); return; }
        if (B.firstAt === null) B.firstAt = performance.now();
        B.frame = event.data;
        timed(handler, event).then((t) => B.renders.push(t));
      });
    }
  };
  B.rerender = async (n) => {
    const out = [];
    for (let i = 0; i < n; i++) {
      out.push(await timed(B.ws.onmessage, new MessageEvent('message', { data: B.frame })));
    }
    return out;
  };
})();
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def seed(url: str, n: int) -> None:
    """``n`` queued conversations in the launch languages and one agent."""
    rng = random.Random(7)
    languages = list(MESSAGES)
    async with Store(DatabaseConfig(url=url)) as store:
        for i in range(n):
            lang = languages[i % len(languages)]
            conv, _ = await store.create_conversation(language=lang, locale=None)
            text = MESSAGES[lang].replace("48213", str(40000 + i))
            await store.accept_message(conv.id, f"m{i}", text)
            await store.request_handoff(conv.id, rng.choice(REASONS))
        await store.add_agent("bench", await asyncio.to_thread(hash_password, PASSWORD))


def start_server(db: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "serve", "--no-engine", "--port", str(port),
             "--db", db],
            cwd=ROOT, env=env, stderr=out,
        )  # fmt: skip


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the server did not start; see {log}")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(url: str, renders: int) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            # The console's CSP forbids eval, which Playwright's string predicates use.
            context = await browser.new_context(
                viewport={"width": 1280, "height": 900}, bypass_csp=True
            )
            page = await context.new_page()
            await page.add_init_script(INIT_SCRIPT)
            await page.goto(url + "/console")
            await page.fill("#login input[name=name]", "bench")
            await page.fill("#login input[name=password]", PASSWORD)
            await page.evaluate("window.__bench.clickAt = performance.now()")
            await page.click("#login button[type=submit]")
            await page.wait_for_function("window.__bench.renders.length > 0", timeout=60_000)
            first = await page.evaluate("window.__bench.renders[0]")
            arrival = await page.evaluate("window.__bench.firstAt - window.__bench.clickAt")
            shown = await page.locator(".cs-queue .cs-item").count()
            size = await page.evaluate("window.__bench.frame.length")
            again = await page.evaluate(f"window.__bench.rerender({renders})")
            await page.screenshot(path=str(ROOT / "bench" / "out" / "console-queue.png"))
        finally:
            await browser.close()
    return {"first": first, "arrival": arrival, "shown": shown, "bytes": size, "again": again}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--renders", type=int, default=30)
    args = parser.parse_args()
    if not CHROMIUM.exists():
        raise SystemExit(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    (ROOT / "bench" / "out").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        db = f"sqlite+aiosqlite:///{tmp}/bot.db"
        cli = [sys.executable, "-m", "bot.cli"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}
        subprocess.run([*cli, "db", "upgrade", "--db", db], cwd=ROOT, env=env, check=True)
        started = time.perf_counter()
        asyncio.run(seed(db, args.conversations))
        print(f"seeded {args.conversations} queued conversations in "
              f"{time.perf_counter() - started:.1f} s")  # fmt: skip
        port = free_port()
        log = Path(tmp) / "server.log"
        proc = start_server(db, port, log)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_http(url, proc, log)
            got = asyncio.run(measure(url, args.renders))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    first, again = got["first"], got["again"]
    layouts = [r["layout"] for r in again]
    frames = [r["frame"] for r in again]
    print(f"queue frame: {got['bytes']} bytes, {got['shown']} conversations shown")
    print(f"login click -> queue frame in the page: {got['arrival']:.0f} ms")
    print(
        f"first render: script {first['script']:.1f} ms, + layout {first['layout']:.1f} ms, "
        f"next frame {first['frame']:.1f} ms"
    )
    print(
        f"re-render x{len(again)}: script+layout median {statistics.median(layouts):.1f} ms, "
        f"p95 {pct(layouts, 0.95):.1f} ms; to the next frame median "
        f"{statistics.median(frames):.1f} ms, p95 {pct(frames, 0.95):.1f} ms"
    )
    ok = (
        got["shown"] >= args.conversations
        and first["layout"] < BUDGET_MS
        and statistics.median(layouts) < BUDGET_MS
    )
    print(f"{'PASS' if ok else 'MISS'}: budget {BUDGET_MS:.0f} ms for {args.conversations}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
