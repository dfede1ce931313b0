"""An agent's reply reaching the customer's screen, translation included, through the
embedded model.

    .venv/bin/python bench/bench_agent.py [--replies 12] [--languages de,es,ja,zh,fr,ko]

One real ``bot serve`` process (its own embedded llama.cpp engine on a free port, a fresh
migrated SQLite database), a real agent (created with ``bot agent add``, logged in over
HTTP: session cookie + CSRF token) on ``/ws/agent`` and real customers on ``/ws/chat``.
Each customer (one per language, plus an English one) writes, asks for a person and is
claimed by the agent. Then the agent sends the replies (agent-style English sentences from
tests/data/translate/test/en.toml, none of them in the translation memory), rotating over
the conversations:

- latency: from the agent's ``message`` frame to the customer's ``agent.message``;
- share spent translating: each reply's latency less the median latency of the same
  replies sent to the English customer (no translation: the rest of the path), over its
  latency;
- with ``--preview``: each reply is previewed first (translation + back-translation
  check, what the console does while the agent types); then sending reuses the translation.

Prints the figures (median, p95). The engine shares the machine with this process and the
server: on 2 cores the figures are those of a busy laptop, not of a GPU host.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent
REPLIES = ROOT / "tests" / "data" / "translate" / "test" / "en.toml"
PASSWORD = "bench agent password"
LOCALES = {
    "de": "de-DE", "es": "es-ES", "ja": "ja-JP", "zh": "zh-CN", "fr": "fr-FR", "ko": "ko-KR",
    "pt": "pt-BR", "it": "it-IT", "ru": "ru-RU", "ar": "ar-AE", "nl": "nl-NL", "en": "en-US",
}  # fmt: skip
FIRST = {
    "de": "Meine Bestellung ist nicht angekommen.", "es": "Mi pedido no ha llegado.",
    "ja": "注文した商品が届きません。", "zh": "我的订单还没有到。",
    "fr": "Ma commande n'est pas arrivée.", "ko": "주문한 상품이 도착하지 않았습니다.",
    "pt": "Meu pedido não chegou.",
    "it": "Il mio ordine non è arrivato.", "ru": "Мой заказ не пришёл.", "ar": "لم يصل طلبي.",
    "nl": "Mijn bestelling is niet aangekomen.", "en": "My order hasn't arrived.",
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Refused(Exception):
    """The server answered a frame with an error (e.g. no translation passed its checks)."""


class Socket:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, **frame: Any) -> None:
        await self.ws.send(json.dumps(frame))

    async def until(self, kind: str, **fields: Any) -> dict[str, Any]:
        async with asyncio.timeout(600):
            while True:
                frame = json.loads(await self.ws.recv())
                if frame.get("type") == kind and all(frame.get(k) == v for k, v in fields.items()):
                    return frame
                if frame.get("type") == "error":
                    raise Refused(str(frame.get("message")))


def login(base: str) -> tuple[str, str]:
    """(cookie header, CSRF token) of a console session."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    basic = base64.b64encode(f"bench:{PASSWORD}".encode()).decode()
    conn.request("POST", "/console/login", headers={"Authorization": f"Basic {basic}",
                                                    "Origin": base})  # fmt: skip
    res = conn.getresponse()
    body = json.loads(res.read())
    if res.status != 200:
        raise SystemExit(f"login failed: {res.status} {body}")
    return (res.getheader("Set-Cookie") or "").split(";")[0], str(body["csrf"])


def wait_engine(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    for _ in range(1200):
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=5) as r:
                if json.loads(r.read()).get("engine") == "ok":
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server or its engine did not start; see {log}")


async def run(base: str, languages: list[str], replies: list[str], preview: bool) -> int:
    ws_base = base.replace("http://", "ws://")
    cookie, csrf = await asyncio.to_thread(login, base)
    agent = Socket(
        await connect(ws_base + "/ws/agent", origin=base,  # type: ignore[arg-type]
                      additional_headers={"Cookie": cookie}, open_timeout=60)
    )  # fmt: skip
    await agent.send(type="hello", v=1, csrf=csrf)
    await agent.until("ready")
    customers: dict[str, tuple[Socket, str]] = {}
    for lang in [*languages, "en"]:
        customer = Socket(await connect(ws_base + "/ws/chat", origin=base, open_timeout=60))
        await customer.send(type="hello", v=1, locale=LOCALES[lang])
        cid = (await customer.until("welcome"))["conversation"]
        await customer.send(type="message", id="m1", text=FIRST[lang])
        await customer.until("reply")
        await customer.send(type="handoff.request")
        await customer.until("handoff")
        await agent.send(type="claim", conversation=cid)
        await agent.until("transcript", conversation=cid)
        customers[lang] = (customer, cid)
    print(f"{len(customers)} conversations claimed ({', '.join(customers)})", file=sys.stderr)

    async def reply(lang: str, text: str, n: int) -> tuple[float | None, float | None]:
        customer, cid = customers[lang]
        previewed = None
        if preview:
            started = time.perf_counter()
            await agent.send(type="preview", conversation=cid, text=text, id=f"p{n}")
            await agent.until("preview", id=f"p{n}")
            previewed = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        await agent.send(type="message", conversation=cid, text=text, id=f"r{n}")

        async def on_screen() -> float:
            await customer.until("agent.message")
            return (time.perf_counter() - started) * 1000

        # Both sockets at once: an error frame to the agent means nothing was sent.
        waiting = asyncio.ensure_future(on_screen())
        try:
            await agent.until("sent", id=f"r{n}")
        except Refused as exc:
            waiting.cancel()
            print(f"  {lang} refused: {exc}", file=sys.stderr)
            return None, previewed
        return await waiting, previewed

    translated: list[tuple[str, float]] = []
    previews: list[float] = []
    refused = 0
    for n, text in enumerate(replies):
        lang = languages[n % len(languages)]
        took, previewed = await reply(lang, text, n)
        if previewed is not None:
            previews.append(previewed)
        if took is None:
            refused += 1
            continue
        translated.append((lang, took))
        print(f"  {lang} {took / 1000:6.2f} s  {text[:60]}", file=sys.stderr)
    baseline = [t for n, x in enumerate(replies) if (t := (await reply("en", x, 1000 + n))[0])]
    base = statistics.median(baseline)
    print(f"{refused} of {len(replies)} replies refused: no translation passed the checks")
    times = [t for _, t in translated]
    shares = [max(0.0, t - base) / t for t in times]
    what = "after a preview (translation reused)" if preview else "translation included"
    median, p95 = statistics.median(times) / 1000, pct(times, 0.95) / 1000
    print(f"agent reply -> customer's screen, {what}: {len(times)} replies, "
          f"median {median:.2f} s, p95 {p95:.2f} s")  # fmt: skip
    print(f"same replies to an English customer (no translation): median {base:.0f} ms, "
          f"p95 {pct(baseline, 0.95):.0f} ms")  # fmt: skip
    print(f"share spent translating: median {100 * statistics.median(shares):.1f} %, "
          f"min {100 * min(shares):.1f} %")  # fmt: skip
    if previews:
        median, p95 = statistics.median(previews) / 1000, pct(previews, 0.95) / 1000
        print(f"preview (translation + back-translation check): median {median:.2f} s, "
              f"p95 {p95:.2f} s")  # fmt: skip
    for lang in languages:
        mine = [t for lg, t in translated if lg == lang]
        if mine:
            print(f"  {lang}: median {statistics.median(mine) / 1000:.2f} s over {len(mine)}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replies", type=int, default=12)
    parser.add_argument("--languages", default="de,es,ja,zh,fr,ko")
    parser.add_argument("--preview", action="store_true", help="preview each reply first")
    args = parser.parse_args()
    languages = [x for x in args.languages.split(",") if x in LOCALES and x != "en"]
    with REPLIES.open("rb") as f:
        texts = list(tomllib.load(f)["text"].values())
    replies = [texts[i % len(texts)] for i in range(args.replies)]
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        db = f"sqlite+aiosqlite:///{tmp}/bot.db"
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}
        env["BOT_MODEL__PORT"] = str(free_port())  # an engine of its own
        env["BOT_MODEL__THREADS"] = os.environ.get("BOT_MODEL__THREADS", "2")
        # Latency is measured, not the timeouts: on a busy machine the few-shot prompt
        # can take longer than the default first-token timeout to read.
        env["BOT_MODEL__FIRST_TOKEN_TIMEOUT"] = "120"
        env["BOT_MODEL__READ_TIMEOUT"] = "300"
        env["BOT_MODEL__QUEUE_WAIT"] = "300"
        cli = [sys.executable, "-m", "bot.cli"]
        subprocess.run([*cli, "db", "upgrade", "--db", db], cwd=ROOT, env=env, check=True)
        subprocess.run(
            [*cli, "agent", "add", "bench", "--password-stdin", "--db", db],
            cwd=ROOT, env=env, check=True, input=PASSWORD.encode(),
        )  # fmt: skip
        port = free_port()
        log = Path(tmp) / "server.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*cli, "serve", "--port", str(port), "--db", db], cwd=ROOT, env=env, stderr=out
            )
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server too
        try:
            base = f"http://127.0.0.1:{port}"
            started = time.perf_counter()
            wait_engine(base, proc, log)
            print(f"server and engine ready in {time.perf_counter() - started:.0f} s",
                  file=sys.stderr)  # fmt: skip
            return asyncio.run(run(base, languages, replies, args.preview))
        finally:
            proc.terminate()
            proc.wait(timeout=60)


if __name__ == "__main__":
    raise SystemExit(main())
