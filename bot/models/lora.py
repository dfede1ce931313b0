"""PEFT LoRA adapter -> GGUF LoRA adapter, so llama.cpp can serve it by name.

PEFT stores ``base_model.model.<hf module>.lora_A.weight`` (r, in) and ``...lora_B.weight``
(out, r); llama.cpp wants ``<gguf tensor>.lora_a`` / ``.lora_b`` with the same layouts, plus
``general.type=adapter``, ``adapter.type=lora``, ``adapter.lora.alpha`` and the base model's
architecture. llama.cpp scales by ``alpha / rank`` exactly as PEFT does, so only plain LoRA
qualifies: rsLoRA, DoRA, per-module alphas and extra trained modules are refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import numpy.typing as npt

from bot.errors import ModelError

_PEFT_PREFIX = "base_model.model."
_SUFFIXES = {".lora_A.weight": "lora_a", ".lora_B.weight": "lora_b"}


def adapter_digest(adapter_dir: Path) -> str:
    """A short digest of the adapter's config and weights (names converted files)."""
    digest = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        digest.update((adapter_dir / name).read_bytes())
    return digest.hexdigest()[:12]


def peft_to_gguf(adapter_dir: Path, out_path: Path, base_gguf: Path) -> Path:
    """Write ``out_path`` (GGUF LoRA) from the PEFT adapter in ``adapter_dir``."""
    config = _read_config(adapter_dir)
    base = gguf.GGUFReader(base_gguf)
    arch = _field_str(base, "general.architecture")
    n_blocks = int(_field_scalar(base, f"{arch}.block_count"))
    arch_enum = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}.get(arch)
    if arch_enum is None:
        raise ModelError(f"{base_gguf}: unknown architecture {arch!r}")
    names = gguf.get_tensor_name_map(arch_enum, n_blocks)
    base_shapes = {t.name: tuple(int(n) for n in t.shape) for t in base.tensors}

    tensors: dict[str, npt.NDArray[np.float32]] = {}
    for key, value in _load_weights(adapter_dir).items():
        suffix = next((s for s in _SUFFIXES if key.endswith(s)), None)
        if suffix is None or not key.startswith(_PEFT_PREFIX):
            raise ModelError(f"{adapter_dir}: unsupported tensor {key!r} (only LoRA A/B)")
        module = key[len(_PEFT_PREFIX) : -len(suffix)]
        target = names.get_name(module + ".weight", try_suffixes=(".weight",))
        if target is None or target not in base_shapes:
            raise ModelError(f"{adapter_dir}: {module} has no counterpart in {base_gguf.name}")
        tensors[f"{target}.{_SUFFIXES[suffix]}"] = value
    _check_shapes(tensors, base_shapes, adapter_dir)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        writer = gguf.GGUFWriter(tmp, arch=arch)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["lora_alpha"]))
        for name in sorted(tensors):
            writer.add_tensor(name, tensors[name])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


def _read_config(adapter_dir: Path) -> dict[str, Any]:
    path = adapter_dir / "adapter_config.json"
    try:
        config: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{adapter_dir} is not a PEFT adapter: {exc}") from exc
    refused = {
        "peft_type": config.get("peft_type", "LORA") != "LORA",
        "use_rslora": bool(config.get("use_rslora")),
        "use_dora": bool(config.get("use_dora")),
        "alpha_pattern": bool(config.get("alpha_pattern")),
        "modules_to_save": bool(config.get("modules_to_save")),
        "fan_in_fan_out": bool(config.get("fan_in_fan_out")),
    }
    bad = [name for name, is_bad in refused.items() if is_bad]
    if bad:
        raise ModelError(f"{adapter_dir}: llama.cpp cannot apply this adapter ({', '.join(bad)})")
    return config


def _load_weights(adapter_dir: Path) -> dict[str, npt.NDArray[np.float32]]:
    path = adapter_dir / "adapter_model.safetensors"
    if not path.is_file():
        raise ModelError(f"{adapter_dir}: adapter_model.safetensors is missing")
    # torch, not numpy, reads bfloat16 tensors
    from safetensors.torch import load_file

    return {k: v.float().numpy() for k, v in load_file(path).items()}


def _check_shapes(
    tensors: dict[str, npt.NDArray[np.float32]],
    base_shapes: dict[str, tuple[int, ...]],
    adapter_dir: Path,
) -> None:
    for name, a in tensors.items():
        if not name.endswith(".lora_a"):
            continue
        target = name.removesuffix(".lora_a")
        b = tensors.get(target + ".lora_b")
        n_in, n_out = base_shapes[target][:2]  # ggml order: (in, out)
        if b is None or a.shape[1] != n_in or b.shape[0] != n_out or a.shape[0] != b.shape[1]:
            raise ModelError(
                f"{adapter_dir}: {target} has LoRA shapes {a.shape}/"
                f"{None if b is None else b.shape}, base is {n_out}x{n_in} (wrong base model?)"
            )


def _field_str(reader: gguf.GGUFReader, key: str) -> str:
    field = reader.get_field(key)
    if field is None:
        raise ModelError(f"GGUF file lacks {key}")
    return str(field.contents())


def _field_scalar(reader: gguf.GGUFReader, key: str) -> float:
    field = reader.get_field(key)
    if field is None:
        raise ModelError(f"GGUF file lacks {key}")
    return float(field.contents())
