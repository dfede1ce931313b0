"""The llama.cpp engine build: portable flags, a cache keyed by CPU, crashes detected."""

from __future__ import annotations

import importlib.util
import stat
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "llama_wheel.py"

SAPPHIRE_RAPIDS = frozenset(
    [
        "sse4_2",
        "avx",
        "avx2",
        "fma",
        "f16c",
        "bmi2",
        "avx_vnni",
        "avx512f",
        "avx512cd",
        "avx512vl",
        "avx512dq",
        "avx512bw",
        "avx512vbmi",
        "avx512_vnni",
        "avx512_bf16",
        "amx_tile",
        "amx_int8",
        "amx_bf16",
    ]
)
HASWELL = frozenset(["sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"])
OLD = frozenset(["sse4_2"])


@pytest.fixture(scope="module")
def wheel() -> ModuleType:
    spec = importlib.util.spec_from_file_location("llama_wheel", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_is_never_native_and_never_uses_amx(wheel: ModuleType) -> None:
    """A CPU that reports AMX still gets a build without AMX kernels and without -march=native."""
    args = wheel.cmake_args(wheel.options(SAPPHIRE_RAPIDS))
    assert "-DGGML_NATIVE=OFF" in args
    for amx in ("AMX_TILE", "AMX_INT8", "AMX_BF16"):
        assert f"-DGGML_{amx}=OFF" in args
        assert f"-DGGML_{amx}=ON" not in args
    assert "-DGGML_AVX512=ON" in args and "-DGGML_AVX512_VNNI=ON" in args


def test_builds_use_what_each_cpu_has(wheel: ModuleType) -> None:
    """AVX2 where present, AVX-512 only where every part of it is, plain SSE on old CPUs."""
    haswell = wheel.options(HASWELL)
    assert haswell["AVX2"] and haswell["FMA"] and not haswell["AVX512"]
    old = wheel.options(OLD)
    assert old["SSE42"] and not old["AVX"] and not old["AVX2"]
    partial = wheel.options(HASWELL | {"avx512f"})  # no BW/DQ/VL: no AVX-512 build
    assert not partial["AVX512"]


def test_cache_key_names_the_instruction_sets(wheel: ModuleType) -> None:
    """A wheel cached on one CPU type is not picked up on another."""
    tags = {
        wheel.tag(wheel.options(SAPPHIRE_RAPIDS)),
        wheel.tag(wheel.options(HASWELL)),
        wheel.tag(wheel.options(OLD)),
        wheel.tag(wheel.options(SAPPHIRE_RAPIDS, "avx2")),
    }
    assert len(tags) == 4
    capped = wheel.options(SAPPHIRE_RAPIDS, "avx2")
    assert capped == wheel.options(HASWELL | {"avx_vnni"})


def test_interrupted_build_is_not_trusted(wheel: ModuleType, tmp_path: Path) -> None:
    """A wheel left without its build record (a build killed halfway) is rebuilt, not reused."""
    (tmp_path / "llama_cpp_python-0.3.36-cp311-cp311-linux_x86_64.whl").write_bytes(b"")
    assert wheel._cached_wheel(tmp_path) is None
    (tmp_path / "build.json").write_text("{}")
    assert wheel._cached_wheel(tmp_path) is not None


def test_a_build_that_crashes_is_detected(wheel: ModuleType, tmp_path: Path) -> None:
    """The smoke run names the signal when the engine dies of an illegal instruction."""
    fake = tmp_path / "python"
    fake.write_text(f"#!{sys.executable}\nimport os, signal\nos.kill(os.getpid(), signal.SIGILL)\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    failure = wheel.smoke(str(fake), tmp_path / "model.gguf")
    assert failure is not None and failure.startswith("killed by SIGILL")
