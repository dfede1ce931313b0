"""GGUF -> Hugging Face safetensors dir, for engines that cannot read GGUF (vLLM).

transformers dequantizes the GGUF tensors to float32; the tokenizer (with the chat template)
is rebuilt from the GGUF metadata too, so the result needs no model hub.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from tqdm import tqdm

from bot.errors import ModelError

log = logging.getLogger(__name__)

HF_MARKER = ".complete"


def gguf_to_hf(gguf: Path, out_dir: Path, *, progress: bool = True) -> Path:
    """Write ``out_dir`` (config, safetensors, tokenizer) from ``gguf``; atomic via rename."""
    try:
        import torch
        import transformers
    except ImportError as exc:  # pragma: no cover - both are core dependencies
        raise ModelError(f"converting to a Hugging Face dir needs transformers: {exc}") from exc
    if not progress:
        transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    tmp = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    steps = tqdm(total=3, desc=f"convert {gguf.parent.name} to safetensors", disable=not progress)
    try:
        with steps:
            model = transformers.AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
            )
            steps.update()
            # The weights are plain float32 now; without this the saved config would claim
            # GGUF quantization and loaders would look for a GGUF file.
            model.hf_quantizer = None  # type: ignore[assignment]
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(tmp)
            del model
            steps.update()
            tokenizer = transformers.AutoTokenizer.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name
            )
            tokenizer.save_pretrained(tmp)
            steps.update()
        (tmp / HF_MARKER).write_text(gguf.name + "\n")
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp, out_dir)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"could not convert {gguf} to a Hugging Face dir: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %s to %s", gguf, out_dir)
    return out_dir
