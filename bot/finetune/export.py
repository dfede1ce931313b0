"""``bot finetune export``: the trained adapter in every form an engine takes, installed.

``var/adapters/<name>/`` (what ``model.adapter = "auto"`` looks for) holds

- ``adapter_config.json`` + ``adapter_model.safetensors``: the PEFT layout that
  ``vllm serve BASE --enable-lora --lora-modules <name>=var/adapters/<name>`` loads, with the
  base model's own module names (``q_proj``...);
- ``adapter.gguf``: the same LoRA for llama.cpp (bot/models/lora.py);
- ``merged/`` (optional): the base with the adapter folded in, a plain Hugging Face
  checkpoint for engines without LoRA support;
- ``training.json``: where it came from (base, data card, training history summary).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from bot.errors import BotError
from bot.models.lora import peft_to_gguf

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class ExportError(BotError):
    code = "export"


def export_adapter(
    adapter: Path,
    dest: Path,
    *,
    base_hf: Path,
    base_gguf: Path | None,
    merged: bool = True,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write ``dest`` (replacing it whole, via a temporary dir and one rename)."""
    missing = [n for n in ADAPTER_FILES if not (adapter / n).is_file()]
    if missing:
        raise ExportError(f"{adapter} is not a PEFT adapter dir (missing {', '.join(missing)})")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name in ADAPTER_FILES:
            shutil.copy2(adapter / name, tmp / name)
        _portable_config(tmp / "adapter_config.json", base_hf)
        if base_gguf is not None:
            peft_to_gguf(tmp, tmp / "adapter.gguf", base_gguf)
        if merged:
            merge(tmp, base_hf, tmp / "merged")
        (tmp / "training.json").write_text(
            json.dumps(provenance or {}, indent=1, ensure_ascii=False) + "\n"
        )
        old = dest.with_name(f".{dest.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def merge(adapter: Path, base_hf: Path, out: Path) -> Path:
    """The base model with the LoRA folded into its weights, with the base's tokenizer."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(base_hf, dtype=torch.float32)
        merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        merged.save_pretrained(out)
        AutoTokenizer.from_pretrained(base_hf).save_pretrained(out)
    return out


def _portable_config(path: Path, base_hf: Path) -> None:
    """Name the base by its folder, not this machine's path; refuse what engines cannot
    apply (the converter and vLLM take plain LoRA only)."""
    config = json.loads(path.read_text())
    if config.get("use_rslora") or config.get("use_dora") or config.get("modules_to_save"):
        raise ExportError(f"{path}: only plain LoRA adapters can be served")
    config["base_model_name_or_path"] = base_hf.name
    config["inference_mode"] = True
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
