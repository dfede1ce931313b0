"""``bot finetune train``: a plain LoRA adapter (peft) on any Hugging Face causal LM.

What makes the time count on a 2-core CPU (a step of the 0.5B at batch 2, sequence 128 was
measured at about 15 s with LoRA on every layer):

- **no padding**: each forward pass is one example at its own length; an optimizer step
  accumulates examples up to ``tokens_per_step`` tokens (packing by token budget, without
  letting examples attend to each other);
- **LoRA on the top layers only** (``layers``): backward stops at the lowest adapted layer,
  so the frozen lower layers cost a forward pass and nothing else;
- **logits only where the loss is**: the LM head (a 151k-word vocabulary, a quarter of the
  0.5B's forward FLOPs) runs on the assistant tokens alone, not on the prompt;
- the loss is on the assistant's reply tokens (and its end-of-turn token) only.

AdamW with weight decay, linear warmup then cosine decay, LoRA dropout, gradient clipping,
early stopping on the validation loss (the best adapter is kept), a seed, a tqdm bar, and a
checkpoint every ``checkpoint_every`` steps written atomically (adapter, optimizer,
scheduler, RNG states, data cursor, history): ``train`` after a kill resumes from the last
checkpoint at the same step. Only plain LoRA: the GGUF converter refuses rsLoRA and DoRA.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bot.errors import BotError
from bot.finetune.data import Example

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"
BEST = "adapter"
HISTORY = "history.json"
SOURCE_MIX = {"faq": 0.4, "specifics": 0.35, "refusal": 0.15, "conversation": 0.1}


class TrainingError(BotError):
    """Training cannot start or go on (bad model dir, no examples that fit)."""

    code = "training"


@dataclass(frozen=True)
class TrainConfig:
    """The training run's settings (written into every checkpoint and the history)."""

    base: str  # a Hugging Face causal-LM dir
    # Defaults sized for the 0.5B on 2 CPU cores (docs/finetune.md): about 22k training
    # tokens (~50 examples of ~450 tokens) and three small validations.
    steps: int = 24
    tokens_per_step: int = 900
    max_length: int = 512  # keeps ~95 % of the examples (the median is ~420 tokens)
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = (
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    )  # fmt: skip
    layers: int = 6  # adapt the top N transformer layers (0: all)
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of steps
    clip: float = 1.0
    eval_every: int = 8
    eval_examples: int = 6
    patience: int = 2  # evaluations without improvement before stopping
    checkpoint_every: int = 5
    seed: int = 0
    threads: int = 0  # torch threads (0: torch's default)
    device: str = "auto"  # auto: cuda when available, else cpu

    def __post_init__(self) -> None:
        if self.steps < 1 or self.tokens_per_step < 1 or self.max_length < 16:
            raise TrainingError("need steps >= 1, tokens_per_step >= 1, max_length >= 16")
        if self.rank < 1 or not 0 <= self.dropout < 1 or not 0 <= self.warmup < 1:
            raise TrainingError("need rank >= 1, 0 <= dropout < 1, 0 <= warmup < 1")


@dataclass
class History:
    config: dict[str, Any]
    train: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)
    validation: list[tuple[int, float]] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    step_cpu_seconds: list[float] = field(default_factory=list)  # all threads of the process
    best_step: int = 0
    best_loss: float = math.inf
    bad_evals: int = 0
    stopped: str = ""  # "", "steps", "early stopping"
    dropped_too_long: int = 0  # examples skipped for being longer than max_length
    train_examples: int = 0
    tokens: int = 0
    resumed_at: list[int] = field(default_factory=list)

    def save(self, path: Path) -> None:
        _atomic_write(path, json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> History:
        raw = json.loads(path.read_text())
        raw["train"] = [tuple(p) for p in raw["train"]]
        raw["validation"] = [tuple(p) for p in raw["validation"]]
        return cls(**raw)


@dataclass(frozen=True)
class Tokenized:
    ids: list[int]
    start: int  # first assistant token: the loss is on ids[start:]


def tokenize(tokenizer: Any, example: Example) -> Tokenized:
    """Prompt through the model's chat template (as the engines apply it), then the reply
    with the end-of-turn marker; the boundary is the generation prompt."""
    messages = example.messages
    prompt = tokenizer.apply_chat_template(
        messages[:-1], tokenize=False, add_generation_prompt=True
    )
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise TrainingError("the chat template does not extend the generation prompt")
    reply = full[len(prompt) :].rstrip("\n")  # "...<|im_end|>": no trailing newline to learn
    head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    tail = tokenizer(reply, add_special_tokens=False)["input_ids"]
    return Tokenized(list(head) + list(tail), len(head))


def train(
    config: TrainConfig,
    train_examples: Sequence[Example],
    validation: Sequence[Example],
    out: Path,
    *,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> History:
    """Train (or resume) into ``out``: ``out/adapter`` is the best adapter (PEFT layout)."""
    import torch
    from tqdm import tqdm

    torch_mod: Any = torch
    if config.threads:
        torch.set_num_threads(config.threads)
    device = _device(config.device)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer, model = _load(config, device)

    if not train_examples:
        raise TrainingError("no training examples")
    # Tokenized on first use: a run reads a few hundred of the ~10k examples.
    cache: dict[int, Tokenized | None] = {}

    def row_at(i: int) -> Tokenized | None:
        if i not in cache:
            row = tokenize(tokenizer, train_examples[i])
            fits = len(row.ids) <= config.max_length and row.start < len(row.ids)
            cache[i] = row if fits else None
        return cache[i]

    val_rows: list[Tokenized] = []
    for i in dict.fromkeys(mix_order(validation, config.seed)):
        if len(val_rows) >= config.eval_examples:
            break
        row = tokenize(tokenizer, validation[i])
        if len(row.ids) <= config.max_length:
            val_rows.append(row)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(1, round(config.steps * config.warmup))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        done = (step - warmup) / max(1, config.steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    order = mix_order(train_examples, config.seed)

    checkpoint = out / CHECKPOINT
    step, cursor = 0, 0
    history = History(_plain(config), train_examples=len(train_examples))
    if (checkpoint / "state.pt").is_file():
        step, cursor, history = _resume(checkpoint, model, optimizer, scheduler, config)
        history.resumed_at.append(step)
        log.info("resumed from %s at step %d", checkpoint, step)
    else:
        torch.manual_seed(config.seed)
        random.seed(config.seed)

    bar = tqdm(total=config.steps, initial=step, desc="train", unit="step", disable=not progress)
    model.train()
    while step < config.steps and not history.stopped:
        started, cpu_started = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        batch: list[Tokenized] = []
        budget = 0
        scanned = 0
        while budget < config.tokens_per_step or not batch:
            if scanned >= len(order):  # a whole pass without enough that fits
                if not batch:
                    raise TrainingError(f"no example fits in {config.max_length} tokens")
                break
            found = row_at(order[cursor % len(order)])
            cursor += 1
            scanned += 1
            if found is None:
                history.dropped_too_long += 1
                continue
            batch.append(found)
            budget += len(found.ids)
        targets = sum(len(r.ids) - r.start for r in batch)
        total = 0.0
        for row in batch:
            loss_sum = _loss(model, row, device, reduction="sum")
            (loss_sum / targets).backward()
            total += float(loss_sum.detach())
        torch_mod.nn.utils.clip_grad_norm_(params, config.clip)
        optimizer.step()
        scheduler.step()
        step += 1
        history.tokens += budget
        history.train.append((step, total / targets))
        history.step_seconds.append(time.perf_counter() - started)
        history.step_cpu_seconds.append(time.process_time() - cpu_started)
        bar.set_postfix(loss=f"{total / targets:.3f}", tok=budget)
        bar.update(1)
        if step % config.eval_every == 0 or step == config.steps:
            _evaluate(model, val_rows, device, step, history, out, config)
        if step % config.checkpoint_every == 0 or step == config.steps or history.stopped:
            _save_checkpoint(checkpoint, model, optimizer, scheduler, step, cursor, history)
        history.save(out / HISTORY)  # a killed run keeps its curves
        if on_step is not None:
            on_step(step)
    bar.close()
    if not history.stopped:
        history.stopped = "steps"
    if not (out / BEST).is_dir():  # no validation set: the last adapter is the result
        _save_adapter(model, out / BEST)
    history.save(out / HISTORY)
    return history


def mix_order(examples: Sequence[Example], seed: int) -> list[int]:
    """A training order (indices, as long as ``examples``) that draws each source by
    ``SOURCE_MIX`` and, within a source, the languages in turn: the knowledge base has
    ten times more FAQ questions than refusals, and three times more German than Italian
    ones, but a short run must see every behaviour in every language."""
    rng = random.Random(seed)
    groups: dict[str, dict[str, list[int]]] = {}
    for i, e in enumerate(examples):
        groups.setdefault(e.source, {}).setdefault(e.language, []).append(i)
    cursors: dict[tuple[str, str], int] = {}
    turns: dict[str, int] = {}
    for source, by_language in groups.items():
        turns[source] = 0
        for language, items in by_language.items():
            rng.shuffle(items)
            cursors[source, language] = 0
    sources = sorted(groups)
    weights = [SOURCE_MIX.get(s, 0.05) for s in sources]
    order = []
    for _ in range(len(examples)):
        source = rng.choices(sources, weights)[0]
        languages = sorted(groups[source])
        language = languages[turns[source] % len(languages)]
        turns[source] += 1
        items = groups[source][language]
        order.append(items[cursors[source, language] % len(items)])
        cursors[source, language] += 1
    return order


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _load(config: TrainConfig, device: str) -> tuple[Any, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = Path(config.base)
    if not (base / "config.json").is_file():
        raise TrainingError(f"{base} is not a Hugging Face model dir (no config.json)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = AutoTokenizer.from_pretrained(base)
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        model: Any = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
        model = model.to(device)
    n_layers = int(model.config.num_hidden_layers)
    layers = None
    if 0 < config.layers < n_layers:
        layers = list(range(n_layers - config.layers, n_layers))
    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.target_modules),
        layers_to_transform=layers,
        bias="none",
        task_type="CAUSAL_LM",
        use_rslora=False,
        use_dora=False,
    )
    model.config.use_cache = False
    return tokenizer, get_peft_model(model, lora)


def _loss(model: Any, row: Tokenized, device: str, *, reduction: str) -> Any:
    """Cross-entropy on the assistant tokens, with the LM head on those positions only."""
    import torch
    import torch.nn.functional as F

    inner = model.get_base_model()
    ids = torch.tensor([row.ids], device=device)
    hidden = inner.model(input_ids=ids, use_cache=False).last_hidden_state[0]
    # position t predicts token t+1: the positions just before each assistant token
    positions = torch.arange(row.start - 1, len(row.ids) - 1, device=device)
    logits = inner.lm_head(hidden[positions]).float()
    return F.cross_entropy(logits, ids[0, positions + 1], reduction=reduction)


def _evaluate(
    model: Any,
    rows: Sequence[Tokenized],
    device: str,
    step: int,
    history: History,
    out: Path,
    config: TrainConfig,
) -> None:
    import torch

    if not rows:
        return
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            total += float(_loss(model, row, device, reduction="sum"))
            count += len(row.ids) - row.start
    model.train()
    loss = total / count
    history.validation.append((step, loss))
    if loss < history.best_loss - 1e-4:
        history.best_loss, history.best_step, history.bad_evals = loss, step, 0
        _save_adapter(model, out / BEST)
    else:
        history.bad_evals += 1
        if history.bad_evals >= config.patience:
            history.stopped = "early stopping"
    log.info("step %d: validation loss %.4f (best %.4f)", step, loss, history.best_loss)


def _save_adapter(model: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def _save_checkpoint(
    path: Path,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    step: int,
    cursor: int,
    history: History,
) -> None:
    """Everything to go on at ``step``, swapped in with one rename (a kill mid-save leaves
    the previous checkpoint whole)."""
    import torch
    from peft import get_peft_model_state_dict

    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {
        "step": step,
        "cursor": cursor,
        "adapter": get_peft_model_state_dict(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": {
            "python": random.getstate(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
    }
    torch.save(state, tmp / "state.pt")
    history.save(tmp / HISTORY)
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def _resume(
    path: Path, model: Any, optimizer: Any, scheduler: Any, config: TrainConfig
) -> tuple[int, int, History]:
    import torch
    from peft import set_peft_model_state_dict

    state = torch.load(path / "state.pt", weights_only=False)
    history = History.load(path / HISTORY)
    if history.config != _plain(config):
        changed = sorted(k for k, v in _plain(config).items() if history.config.get(k) != v)
        raise TrainingError(
            f"{path} was written with other settings ({', '.join(changed)}): "
            "use the same settings, or another --out to start afresh"
        )
    set_peft_model_state_dict(model, state["adapter"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    random.setstate(state["rng"]["python"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return int(state["step"]), int(state["cursor"]), history


def _plain(config: TrainConfig) -> dict[str, Any]:
    plain: dict[str, Any] = json.loads(json.dumps(asdict(config)))
    return plain


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
