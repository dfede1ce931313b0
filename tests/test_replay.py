"""Conversation replay tests (docs/replay.md).

Every conversation in tests/conversations/ runs here as one test, through the real pipeline
with the model's answers pinned from its cassette (no model engine needed). Below them: the
format loader, the cassette transports, the JUnit and results files, ``bot replay diff``,
determinism, the ``--url`` mode against a real server on port 0, and the export of a stored
conversation from the server's database.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.config import Config
from bot.llm import LLMClient
from bot.pipeline import Pipeline
from bot.replay import CassetteMiss, ReplayFormatError
from bot.replay.cassette import (
    Answer,
    Cassette,
    CassetteTransport,
    RecordingTransport,
    request_key,
    sse,
)
from bot.replay.checks import check
from bot.replay.diff import diff, load_side, word_diff
from bot.replay.format import Conversation, ReplayFile, dumps, load, loads, replay_files
from bot.replay.record import export, from_text, pin
from bot.replay.report import junit_xml, text_report
from bot.replay.results import (
    ERROR,
    FAIL,
    PASS,
    XFAIL,
    XPASS,
    ConversationResult,
    TurnOutcome,
    results_json,
)
from bot.replay.runner import FileResult, InProcess, record, run_pinned
from bot.replay.wire import WireRunner
from bot.retrieve import Retriever
from bot.server.app import App

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "tests" / "conversations"
FACTOR = float(os.environ.get("BOT_TEST_TIMEOUT_FACTOR", "1"))
LANGUAGES = ("en", "zh", "es", "fr", "de", "ja", "ko", "pt", "it", "ru", "ar", "nl")
TOPICS = (
    "orders", "shipping", "returns", "refunds", "payments",
    "account", "promotions", "warranty", "products", "contact",
)  # fmt: skip


def _suite() -> list[Any]:
    """One pytest param per conversation; a file that does not load is a failing param."""
    params = []
    for path in replay_files([SUITE]):
        try:
            file = load(path)
        except ReplayFormatError as exc:
            params.append(pytest.param(None, str(exc), id=path.name))
            continue
        params += [pytest.param(file, c.id, id=f"{path.name}::{c.id}") for c in file.conversations]
    return params


@pytest.fixture(scope="session")
def replayer(pipeline: Pipeline) -> InProcess:
    return InProcess(pipeline)


def conversation(text: str, path: Path = Path("t.yaml")) -> Conversation:
    return loads(text, path).conversations[0]


async def run_one(replayer: InProcess, file: ReplayFile, conv_id: str) -> ConversationResult:
    conv = next(c for c in file.conversations if c.id == conv_id)
    return (await run_pinned(replayer, file, [conv])).conversations[0]


# -- the suite --------------------------------------------------------------------------------


@pytest.mark.parametrize(("file", "conv_id"), _suite())
async def test_conversation(replayer: InProcess, file: ReplayFile | None, conv_id: str) -> None:
    """A recorded conversation, replayed with pinned model answers, meets its expectations
    (turns marked xfail are known errors: the test is xfail while they still fail)."""
    if file is None:
        pytest.fail(conv_id, pytrace=False)
    result = await run_one(replayer, file, conv_id)
    report = "\n".join(text_report([FileResult(file, [result])]).splitlines()[:-1])
    if result.status in (FAIL, ERROR):
        pytest.fail("\n".join(result.failures()) + "\n\n" + report, pytrace=False)
    if result.status == XFAIL:
        pytest.xfail("; ".join(result.xfails()))


def test_the_suite_covers_languages_topics_and_situations() -> None:
    """The suite holds 40+ conversations in all 12 launch languages, every FAQ topic,
    follow-ups, language switches, placeholders, off-topic turns and handoffs to agents."""
    files = [load(p) for p in replay_files([SUITE])]
    convs = [c for f in files for c in f.conversations]
    assert len(convs) >= 40
    assert {c.id.split("-")[0] for c in convs} == set(LANGUAGES)
    expects = [t.expect for c in convs for t in c.turns]
    faqs = {f for e in expects for f in (*(e.faq or ()), *(e.faq_any or ()))}
    assert {f.split(".")[0] for f in faqs} >= set(TOPICS)
    tags = {t for c in convs for t in c.tags}
    assert tags >= {"followup", "switch", "placeholder", "offtopic", "handoff", "agent", "price"}
    handoff_languages = {
        c.id.split("-")[0]
        for c in convs
        for t in c.turns
        if t.expect.handoff_reason == "customer_request" and t.kind == "customer"
    }
    assert len(handoff_languages) >= 8
    checked = [t for c in convs for t in c.turns if t.expect]
    xfails = [t for t in checked if t.xfail]
    # Five of the marks are clarifying questions (two close entries offered as buttons) where
    # the ideal is the direct answer: honest, but still a miss, so they stay marked.
    assert 0 < len(xfails) <= 0.18 * len(checked), "xfail marks known errors: keep them few"


# -- the format -------------------------------------------------------------------------------

GOOD = """\
version: 1
conversations:
  - id: es-1
    title: A test
    locale: es-ES
    market: EU
    tags: [orders]
    turns:
      - customer: "¿Dónde está mi pedido #48213?"
        expect:
          language: es
          faq: orders.track
          source: [composed, curated]
          placeholders: ["#48213"]
      - customer: ¿Y cuánto tarda?
        locale: en-GB
        market: UK
        expect: {faq_any: [shipping.delivery_times, orders.track], handoff: false}
        xfail: a known error
      - agent: "Hola, soy Marta"
        name: Marta
        leave: true
      - action: talk_to_human
"""


def test_format_reads_turns_expectations_and_agents() -> None:
    """A QA-written file loads with its expectations, agent turns and button presses."""
    file = loads(GOOD, Path("es.yaml"))
    (conv,) = file.conversations
    assert (conv.id, conv.locale, conv.market, conv.tags) == ("es-1", "es-ES", "EU", ("orders",))
    first, second, agent, action = conv.turns
    assert first.expect.faq == ("orders.track",)
    assert first.expect.source == ("composed", "curated")
    assert first.expect.placeholders == ("#48213",)
    assert (second.locale, second.market) == ("en-GB", "UK")
    assert (second.xfail, second.expect.handoff) == ("a known error", False)
    assert second.expect.faq_any == ("shipping.delivery_times", "orders.track")
    assert (agent.kind, agent.agent, agent.leave) == ("agent", "Marta", True)
    assert (action.kind, action.text) == ("action", "talk_to_human")
    assert file.cassette_path == Path("es.cassette.json")


XFAIL_LINE = "        xfail: a known error\n"
TURN_2_EXPECT = (
    "        expect: {faq_any: [shipping.delivery_times, orders.track], handoff: false}\n"
)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("expect:\n          language", "expct:\n          language"), "unknown key 'expct'"),
        (('"¿Dónde está mi pedido #48213?"', "Where is my order #48213?"), "quote the text"),
        (("¿Y cuánto tarda?", "no"), "quote it"),
        (("source: [composed, curated]", "source: [composed, invented]"), "unknown source"),
        ((XFAIL_LINE, XFAIL_LINE + "        xfail: b\n"), "twice"),
        ((TURN_2_EXPECT, ""), "'xfail' needs"),
        (("  - id: es-1", "  - id: es 1"), "letters, digits"),
        (("action: talk_to_human", "action: dance"), "unknown action"),
    ],
)
def test_format_errors_name_the_file_line_and_turn(change: tuple[str, str], message: str) -> None:
    """A broken file is refused with the file, the line and what is wrong, never half-read."""
    text = GOOD.replace(*change)
    assert text != GOOD
    with pytest.raises(ReplayFormatError, match=r"^es\.yaml:[0-9]+: ") as info:
        loads(text, Path("es.yaml"))
    assert message in str(info.value)


def test_an_empty_faq_list_means_no_faq_answer() -> None:
    """`faq: []` is an expectation (the bot must not answer from the FAQ), not a blank."""
    expect = conversation(GOOD.replace("faq: orders.track", "faq: []")).turns[0].expect
    assert ("faq", ()) in expect.items()
    answered = TurnOutcome(1, "customer", "hi", faq_ids=["orders.track"], reply="…")
    problems, _, _ = check(expect, answered)
    assert "faq: expected [], got [orders.track]" in problems


def test_a_conversation_id_is_used_once_per_file() -> None:
    """Two conversations with the same id in a file are refused."""
    body = GOOD.split("conversations:\n")[1]
    with pytest.raises(ReplayFormatError, match="already used"):
        loads(GOOD + body, Path("es.yaml"))


def test_written_files_read_back_the_same() -> None:
    """What `bot replay record` writes loads back as the same conversations, with the bot's
    replies as comments."""
    conv = loads(GOOD, Path("es.yaml")).conversations[0]
    text = dumps([conv], notes={("es-1", 1): "bot (es · composed · orders.track): Sobre…"})
    assert "        # bot (es · composed · orders.track): Sobre…\n" in text
    again = loads(text, Path("es.yaml")).conversations[0]
    assert [replace(t, line=0) for t in again.turns] == [replace(t, line=0) for t in conv.turns]
    assert replace(again, turns=(), line=0) == replace(conv, turns=(), line=0)


def test_a_text_file_becomes_a_conversation() -> None:
    """`--from-text`: one message per line, agent lines and the button, comments skipped."""
    conv = from_text(
        "# a comment\nHola\n\n[talk_to_human]\nagent(Marta): Hola, soy Marta\nagent: Adiós\n",
        conversation_id="x",
        locale="es-ES",
        market=None,
    )
    assert [(t.kind, t.text, t.agent) for t in conv.turns] == [
        ("customer", "Hola", None),
        ("action", "talk_to_human", None),
        ("agent", "Hola, soy Marta", "Marta"),
        ("agent", "Adiós", None),
    ]


# -- the cassette -----------------------------------------------------------------------------

CHAT = [{"role": "system", "content": "Translate."}, {"role": "user", "content": "Hola {1}"}]


def engine(text: str, calls: list[dict[str, Any]]) -> httpx.MockTransport:
    """A model engine at the HTTP edge: streams ``text`` for every chat completion."""

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(json.loads(request.content))
        body = sse(Answer("-", text=text, usage={"completion_tokens": 3}), "meridian")
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    return httpx.MockTransport(handle)


async def test_a_recorded_answer_is_replayed_as_a_stream(config: Config) -> None:
    """Recorded once through the engine, the answer comes back from the cassette, streamed
    in pieces, without the engine."""
    cfg, cassette, calls = config.model, Cassette(recorded_with={"model": "m"}), []
    recorder = RecordingTransport(engine("Hello {1}, how are you?", calls), cassette, "c1")
    recorder.turn = 2
    async with LLMClient(cfg, transport=recorder) as llm:
        recorded = await llm.chat(CHAT, max_tokens=50)
    assert recorded.text == "Hello {1}, how are you?" and len(calls) == 1
    (key,) = cassette.calls
    assert key == request_key(calls[0])
    assert cassette.calls[key].answers[0].at == "c1#2"

    pinned = CassetteTransport(Cassette.loads(cassette.dumps()), "c1")
    pinned.turn = 2
    pieces: list[str] = []

    async def on_delta(piece: str) -> None:
        pieces.append(piece)

    async with LLMClient(cfg, transport=pinned) as llm:
        replayed = await llm.chat(CHAT, max_tokens=50, on_delta=on_delta)
    assert replayed.text == recorded.text
    assert len(pieces) > 1
    assert pinned.used == {key}


async def test_a_request_not_in_the_cassette_fails_naming_the_turn_and_the_change(
    config: Config,
) -> None:
    """A prompt that changed since recording is a failure that names the turn and says what
    changed, never a silent call to a model."""
    cassette, calls = Cassette(recorded_with={"model": "m"}), []
    recorder = RecordingTransport(engine("Hello", calls), cassette, "c1")
    recorder.turn = 3
    async with LLMClient(config.model, transport=recorder) as llm:
        await llm.chat(CHAT, max_tokens=50)
    pinned = CassetteTransport(cassette, "c1")
    pinned.turn = 3
    changed = [CHAT[0], {"role": "user", "content": "Adiós {1}"}]
    async with LLMClient(config.model, transport=pinned) as llm:
        with pytest.raises(CassetteMiss) as info:
            await llm.chat(changed, max_tokens=50)
        assert llm.breaker.state == "closed"
    message = str(info.value)
    assert message.startswith("turn 3: model request not in the cassette")
    assert "the last message: recorded 'Hola {1}'" in message
    assert "Adiós {1}" in message


async def test_a_pinned_turn_without_its_model_answer_is_an_error_on_that_turn(
    replayer: InProcess,
) -> None:
    """A conversation whose cassette lacks a model call fails on that turn, by number; the
    other turns still run and are checked."""
    conv = conversation(
        """
conversations:
  - id: miss
    locale: en-US
    turns:
      - customer: "How do I return an item?"
        expect: {faq: returns.start}
      - customer: "Hola, ¿puedo pagar con PayPal?"
        expect: {faq: payments.methods}
"""
    )
    transport = CassetteTransport(Cassette(recorded_with={"model": "m"}), conv.id)
    result = await replayer.replay(conv, mode="pinned", transport=transport)
    first, second = result.verdicts
    assert first.status == PASS
    assert second.status == ERROR
    assert result.failures()[0].startswith("turn 2: error: turn 2: model request not in the")


# -- reports ----------------------------------------------------------------------------------

MIXED = """\
conversations:
  - id: passes
    locale: de-DE
    turns:
      - customer: "Wie kann ich einen Artikel zurückgeben?"
        expect: {language: de, faq: returns.start, reply_language: de}
  - id: fails
    locale: en-US
    turns:
      - customer: "How do I reset my password?"
        expect: {faq: orders.track}
  - id: known
    locale: en-US
    turns:
      - customer: "How do I reset my password?"
        expect: {faq: orders.track}
        xfail: a known error
      - customer: "Do you take PayPal?"
        expect: {faq: payments.methods}
  - id: fixed
    locale: en-US
    turns:
      - customer: "Do you take PayPal?"
        expect: {faq: payments.methods}
        xfail: it used to fail
"""


@pytest.fixture(scope="module")
async def mixed(replayer: InProcess, tmp_path_factory: pytest.TempPathFactory) -> FileResult:
    """Four conversations, recorded without a model: pass, fail, xfail, xpass."""
    path = tmp_path_factory.mktemp("mixed") / "mixed.yaml"
    path.write_text(MIXED, encoding="utf-8")
    file = load(path)
    _, cassette = await record(replayer, file, model=False)
    cassette.save(file.cassette_path)
    return await run_pinned(replayer, file, file.conversations)


def test_the_report_shows_each_turn_and_the_figures(mixed: FileResult) -> None:
    """The text report shows every turn, the bot's reply and what failed, then the totals."""
    statuses = {r.conversation.id: r.status for r in mixed.conversations}
    assert statuses == {"passes": PASS, "fails": FAIL, "known": XFAIL, "fixed": FAIL}
    assert [v.status for r in mixed.conversations for v in r.verdicts][-1] == XPASS
    text = text_report([mixed])
    assert "FAIL  mixed.yaml :: fails" in text
    assert "faq: expected [orders.track], got [account.password]" in text
    assert "known: a known error" in text
    assert "remove the xfail" in text
    assert text.rstrip().splitlines()[-1] == (
        "4 conversations: 1 pass, 1 xfail, 2 fail; 5 turns: 2 pass, 1 xfail, 1 fail, 1 xpass"
    )


def test_junit_has_one_case_per_conversation(mixed: FileResult) -> None:
    """CI reads one testcase per conversation: failures with the turn, xfails as skipped."""
    root = ET.fromstring(junit_xml([mixed]))
    assert (root.get("tests"), root.get("failures"), root.get("skipped")) == ("4", "2", "1")
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert set(cases) == {"passes", "fails", "known", "fixed"}
    failure = cases["fails"].find("failure")
    assert failure is not None
    assert failure.get("message") == "turn 1: faq: expected [orders.track], got [account.password]"
    skipped = cases["known"].find("skipped")
    assert skipped is not None and skipped.get("message") == "turn 1: a known error"
    assert cases["passes"].find("failure") is None


def test_results_and_diff_say_what_changed(mixed: FileResult, tmp_path: Path) -> None:
    """`bot replay diff` reads a results file and a recording and names the changed turns:
    FAQ ids, handoff and the reply as a word diff."""
    before = tmp_path / "before.json"
    before.write_text(results_json(mixed.conversations, "pinned"), encoding="utf-8")
    assert diff(load_side(before), load_side(mixed.file.path)) == []
    after = json.loads(before.read_text(encoding="utf-8"))
    turn = after["conversations"]["passes"]["turns"][0]
    turn.update(faq_ids=["returns.policy"], handoff=True, handoff_reason="customer_request")
    turn["reply"] = turn["reply"].replace("Artikel", "Produkte", 1)
    (tmp_path / "after.json").write_text(json.dumps(after), encoding="utf-8")
    lines = diff(load_side(before), load_side(tmp_path / "after.json"))
    assert lines[0] == "passes"
    assert "    faq: [returns.start] -> [returns.policy]" in lines
    assert "    handoff: no -> customer_request" in lines
    assert any(
        line.startswith("    reply: ") and "[-Artikel-]{+Produkte+}" in line for line in lines
    )


def test_word_diff_compares_cjk_by_character() -> None:
    """Chinese and Japanese replies differ by character, not as one long word."""
    assert word_diff("退货需要三天", "退货需要五天") == "退货需要[-三-]{+五+}天"
    assert word_diff("Tu pedido llega mañana", "Tu pedido llega hoy") == (
        "Tu pedido llega [-mañana-]{+hoy+}"
    )


# -- determinism --------------------------------------------------------------------------------


async def test_replaying_twice_gives_the_same_results(replayer: InProcess) -> None:
    """The same files replayed twice (caches warm the second time) write the same results,
    byte for byte."""
    files = [load(SUITE / f"{lang}.yaml") for lang in ("es", "ja", "nl")]
    first = [
        r for f in files for r in (await run_pinned(replayer, f, f.conversations)).conversations
    ]
    second = [
        r for f in files for r in (await run_pinned(replayer, f, f.conversations)).conversations
    ]
    assert results_json(first, "pinned") == results_json(second, "pinned")


async def test_caches_and_order_do_not_change_results(
    replayer: InProcess, pipeline: Pipeline
) -> None:
    """Conversations replayed in reverse order, with a cold embedding cache, give the same
    turns as in file order with a warm one: no state leaks from one conversation to another."""
    file = load(SUITE / "de.yaml")
    warm = (await run_pinned(replayer, file, file.conversations)).conversations
    cold_pipeline = InProcess(pipeline).pipeline(None)
    cold_pipeline.retriever = Retriever(pipeline.retriever.index_dir, pipeline.retriever.embedder)
    cold = InProcess(cold_pipeline)
    backwards = (await run_pinned(cold, file, file.conversations[::-1])).conversations[::-1]
    assert results_json(backwards, "pinned") == results_json(warm, "pinned")


# -- over the wire, and from the database -------------------------------------------------------

WIRE = """\
conversations:
  - id: wire
    locale: es-ES
    turns:
      - customer: "¿Dónde está mi pedido #48213?"
        expect: {language: es, faq: orders.track, source: composed, placeholders: ["#48213"]}
      - customer: "How much is shipping?"
        locale: en-GB
        expect: {language: en, faq: shipping.costs, reply_language: en}
      - customer: "I want to talk to a person"
        expect: {handoff: true, handoff_reason: customer_request}
      - agent: "Hi, Sam here."
        name: Sam
      - customer: "Thanks Sam"
        expect: {handoff: true}
"""


@pytest.fixture
async def server(start: Any) -> AsyncIterator[App]:
    """The real chat server on port 0 with a fresh, migrated SQLite database."""
    async with start() as app:
        yield app


def detect_with(pipeline: Pipeline) -> Callable[[str, str | None], str | None]:
    return lambda text, hint: pipeline.detector.detect(text, hint=hint).language


async def test_over_the_wire_the_server_gives_what_the_pipeline_gives(
    server: App, pipeline: Pipeline, replayer: InProcess
) -> None:
    """`--url` drives a running server over the chat protocol (a page-locale switch is a
    reconnect with the new locale) and sees the same FAQ ids, languages and handoff as an
    in-process replay; the source is not on the wire and the agent turn cannot be sent."""
    conv = conversation(WIRE)
    wire = WireRunner(server.chat_url, detect_with(pipeline), timeout=30 * FACTOR, quiet=0.5)
    over_the_wire = await wire.replay(conv)
    in_process = await replayer.replay(conv, mode="pinned", use_model=False)
    assert over_the_wire.error is None
    assert [v.status for v in over_the_wire.verdicts] == [PASS, PASS, PASS, "skip", PASS]
    assert over_the_wire.verdicts[0].unchecked == ["source"]

    def facts(o: TurnOutcome) -> tuple[object, ...]:
        return (o.language, o.faq_ids, o.reply, o.reply_language, o.handoff, o.handoff_reason)

    # Up to the agent turn: after it the conversation is the agent's in-process only.
    assert [facts(o) for o in over_the_wire.outcomes[:3]] == [
        facts(o) for o in in_process.outcomes[:3]
    ]


async def test_a_stored_conversation_is_exported_and_replays(
    server: App, pipeline: Pipeline, replayer: InProcess, tmp_path: Path
) -> None:
    """`bot replay record CONVERSATION_ID`: a conversation the server stored comes back as
    a replay file with what the customer saw; pinned, it replays and passes."""
    conv = conversation(WIRE)
    wire = WireRunner(server.chat_url, detect_with(pipeline), timeout=30 * FACTOR, quiet=0.5)
    await wire.replay(conv)
    (row,) = await server.store.recent_conversations()
    assert row["customer_messages"] == 4

    exported, stored = await export(server.store, replayer, row["id"])
    assert [t.text for t in exported.turns] == [t.text for t in conv.turns if t.kind == "customer"]
    assert [o.faq_ids for o in stored][:2] == [["orders.track"], ["shipping.costs"]]
    assert (stored[2].handoff_reason, stored[3].reply) == ("customer_request", None)

    path = tmp_path / "exported.yaml"
    pinned = pin(replace(exported, path=path), stored, replayer)
    path.write_text(dumps([pinned], notes={}), encoding="utf-8")
    file = load(path)
    _, cassette = await record(replayer, file, model=False)
    cassette.save(file.cassette_path)
    (result,) = (await run_pinned(replayer, file, file.conversations)).conversations
    assert result.status == PASS, "\n".join(result.failures())


def test_the_command_line_writes_junit_and_fails_on_a_failure(
    mixed: FileResult, tmp_path: Path
) -> None:
    """`bot replay run` prints the report, writes JUnit and exits 1 when a turn fails;
    `bot replay diff` exits 0 when nothing changed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}
    junit = tmp_path / "junit.xml"
    args = ["replay", "run", str(mixed.file.path), "--only", "pass*", "--only", "fail*"]
    proc = subprocess.run(
        [sys.executable, "-m", "bot.cli", *args, "--junit", str(junit)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300 * FACTOR, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "FAIL  mixed.yaml :: fails" in proc.stdout
    assert "2 conversations: 1 pass, 1 fail" in proc.stdout
    assert ET.parse(junit).getroot().get("failures") == "1"
    path = str(mixed.file.path)
    same = subprocess.run(
        [sys.executable, "-m", "bot.cli", "replay", "diff", path, path],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=60 * FACTOR, check=False,
    )  # fmt: skip
    assert (same.returncode, same.stdout) == (0, "no changes\n")


def test_a_pinned_turn_that_replies_differently_fails_and_says_where() -> None:
    """Pinned means identical: a changed FAQ answer fails the turns that quote it, naming
    the turn and the first difference; an unchanged turn passes, expectations or not."""
    from bot.replay.checks import verdict
    from bot.replay.format import Turn
    from bot.replay.results import TurnOutcome

    then = TurnOutcome(1, "customer", "¿dónde está mi pedido?", faq_ids=["orders.track"],
                       reply="En cuanto enviemos tu pedido, te mandamos un correo.")  # fmt: skip
    now = replace(then, reply="CAMBIO. En cuanto enviemos tu pedido, te mandamos un correo.")
    turn = Turn("customer", then.text)
    changed = verdict(turn, now, recorded=then, pinned=True)
    assert changed.status == "fail"
    assert any("changed since recording: reply from character 0" in p for p in changed.problems)
    assert verdict(turn, then, recorded=then, pinned=True).status != "fail"
    assert verdict(turn, now, recorded=then).status != "fail"  # live runs show a diff instead
