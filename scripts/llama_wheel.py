#!/usr/bin/env python3
"""Build, cache and verify the llama.cpp engine (llama-cpp-python) for the CPU it runs on.

llama-cpp-python has no binary wheel on PyPI, so it is compiled here. A native build
(``-march=native``) is not portable: on a virtual machine whose CPU reports AMX, the AMX
kernels get compiled in although the hypervisor cannot run them (SIGILL, ``tilezero``), and a
wheel cached on one CPU crashes on another. So:

- the build is never native: the instruction sets are chosen explicitly from what this CPU
  reports (AVX2/FMA/F16C/BMI2, AVX-512 with VNNI/VBMI/BF16 where present), AMX never;
- the wheel cache is keyed by that choice (``<version>/<tag>/``), so a cache copied from
  another CPU is only reused where it fits, and pip's own wheel cache is bypassed (it keys
  by the sdist alone and would hand back a build made with other flags);
- ``check`` runs a real completion in a subprocess; a build that crashes is deleted and
  rebuilt one tier lower (AVX-512 -> AVX2 -> SSE4.2), never reused.

Standard library only: it runs before the project is installed.

    python scripts/llama_wheel.py build --python .venv/bin/python --cache DIR
    python scripts/llama_wheel.py check --python .venv/bin/python --cache DIR --model M.gguf
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
from pathlib import Path

PACKAGE = "llama-cpp-python"
VERSION = "0.3.36"
TIERS = ("avx512", "avx2", "sse42", "baseline")

# ggml option -> the /proc/cpuinfo flags it needs (ggml/src/ggml-cpu/CMakeLists.txt).
_OPTIONS: dict[str, tuple[str, ...]] = {
    "SSE42": ("sse4_2",),
    "AVX": ("avx",),
    "AVX2": ("avx2",),
    "FMA": ("fma",),
    "F16C": ("f16c",),
    "BMI2": ("bmi2",),
    "AVX_VNNI": ("avx_vnni",),
    "AVX512": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
    "AVX512_VBMI": ("avx512vbmi",),
    "AVX512_VNNI": ("avx512_vnni",),
    "AVX512_BF16": ("avx512_bf16",),
}
# The options each tier may use (a tier never uses what a lower one lacks).
_TIER_OPTIONS: dict[str, tuple[str, ...]] = {
    "baseline": (),
    "sse42": ("SSE42",),
    "avx2": ("SSE42", "AVX", "AVX2", "FMA", "F16C", "BMI2", "AVX_VNNI"),
    "avx512": tuple(_OPTIONS),
}
# Never: the AMX kernels are what crashed (see the module docstring).
_ALWAYS_OFF = ("NATIVE", "AMX_TILE", "AMX_INT8", "AMX_BF16", "CPU_ALL_VARIANTS", "BACKEND_DL")


def cpu_flags() -> frozenset[str]:
    """The instruction-set flags the kernel reports for this CPU (empty if unknown)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return frozenset()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def options(flags: frozenset[str], cap: str = "avx512") -> dict[str, bool]:
    """ggml CPU options for ``flags``, using nothing above tier ``cap``."""
    allowed = _TIER_OPTIONS[cap]
    chosen = {
        name: name in allowed and all(f in flags for f in need) for name, need in _OPTIONS.items()
    }
    if not (chosen["AVX2"] and chosen["FMA"] and chosen["F16C"]):  # ggml's AVX2 path needs all 3
        for name in ("AVX2", "FMA", "F16C", "AVX_VNNI"):
            chosen[name] = False
    if not chosen["AVX2"]:
        chosen["AVX512"] = False
    if not chosen["AVX512"]:
        for name in ("AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16"):
            chosen[name] = False
    return chosen


def tag(chosen: dict[str, bool]) -> str:
    """A cache key naming what the build uses, e.g. ``x86_64-avx2-avx512-...``."""
    on = sorted(name.lower() for name, enabled in chosen.items() if enabled)
    return "x86_64-" + ("-".join(on) if on else "baseline")


def cmake_args(chosen: dict[str, bool]) -> str:
    args = [f"-DGGML_{name}=OFF" for name in _ALWAYS_OFF]
    args += [f"-DGGML_{name}={'ON' if on else 'OFF'}" for name, on in chosen.items()]
    return " ".join(args)


def _wheel_dir(cache: Path, chosen: dict[str, bool]) -> Path:
    return cache / f"{PACKAGE}-{VERSION}" / tag(chosen)


def _cached_wheel(directory: Path) -> Path | None:
    wheels = sorted(directory.glob("llama_cpp_python-*.whl"))
    if not wheels or not (directory / "build.json").is_file():
        return None  # an interrupted build leaves no build.json: never trust it
    return wheels[-1]


def build(python: str, cache: Path, cap: str) -> Path:
    """The wheel for this CPU at tier ``cap``, from the cache or freshly compiled."""
    chosen = options(cpu_flags(), cap)
    directory = _wheel_dir(cache, chosen)
    wheel = _cached_wheel(directory)
    if wheel is not None:
        print(f"llama.cpp engine: cached build {tag(chosen)}", flush=True)
        return wheel
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    print(
        f"llama.cpp engine: compiling {PACKAGE}=={VERSION} for {tag(chosen)} "
        "(8-13 min on 2 cores, once per CPU type)",
        flush=True,
    )
    env = {**os.environ, "CMAKE_ARGS": cmake_args(chosen), "FORCE_CMAKE": "1"}
    subprocess.run(
        [python, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-cache-dir",
         "--no-binary", PACKAGE, "--wheel-dir", str(directory), f"{PACKAGE}=={VERSION}"],
        env=env,
        check=True,
    )  # fmt: skip
    info = {"tag": tag(chosen), "cap": cap, "cmake_args": cmake_args(chosen)}
    (directory / "build.json").write_text(json.dumps(info, indent=2) + "\n")
    found = _cached_wheel(directory)
    if found is None:
        raise SystemExit(f"llama.cpp engine: pip built no wheel in {directory}")
    return found


def install(python: str, wheel: Path) -> None:
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall", str(wheel)],
        check=True,
    )


_SMOKE = """
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=256, n_threads=1, verbose=False)
out = llm.create_chat_completion(
    messages=[{"role": "user", "content": "Say OK."}], max_tokens=4, temperature=0)
print(repr(out["choices"][0]["message"]["content"]))
"""


def smoke(python: str, model: Path) -> str | None:
    """None when a real completion runs; else why it failed (signal name, stderr tail)."""
    proc = subprocess.run(
        [python, "-c", _SMOKE, str(model)], capture_output=True, text=True, timeout=300
    )
    return None if proc.returncode == 0 else smoke_failure(proc.returncode, proc.stderr)


def smoke_failure(returncode: int, stderr: str) -> str:
    """"killed by SIGILL" / "exit status 1", with the last lines the process wrote."""
    if returncode < 0:
        why = f"killed by {signal.Signals(-returncode).name}"
    else:
        why = f"exit status {returncode}"
    tail = " | ".join(stderr.strip().splitlines()[-3:])
    return f"{why}{': ' + tail if tail else ''}"


def check(python: str, cache: Path, model: Path, cap: str) -> int:
    """Verify the installed engine on ``model``; rebuild lower until one runs."""
    for tier in TIERS[TIERS.index(cap) :]:
        chosen = options(cpu_flags(), tier)
        if tier != cap:
            install(python, build(python, cache, tier))
        failure = smoke(python, model)
        if failure is None:
            print(f"llama.cpp engine: {tag(chosen)} runs on this CPU", flush=True)
            return 0
        print(
            f"llama.cpp engine: the engine crashes on this CPU ({failure}); "
            f"deleting the {tag(chosen)} build and trying a lower tier",
            file=sys.stderr,
            flush=True,
        )
        shutil.rmtree(_wheel_dir(cache, chosen), ignore_errors=True)
    print("llama.cpp engine: no build runs on this CPU", file=sys.stderr)
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("build", "check", "tag"))
    parser.add_argument("--python", default=sys.executable, help="the venv's interpreter")
    parser.add_argument("--cache", type=Path, default=Path("~/.cache/meridian-bot/wheels"))
    parser.add_argument("--cap", choices=TIERS, default="avx512", help="highest tier to use")
    parser.add_argument("--model", type=Path, help="GGUF file for check")
    args = parser.parse_args()
    cache = args.cache.expanduser()
    if args.command == "tag":
        print(tag(options(cpu_flags(), args.cap)))
        return 0
    if args.command == "build":
        install(args.python, build(args.python, cache, args.cap))
        return 0
    if args.model is None:
        parser.error("check needs --model")
    return check(args.python, cache, args.model, args.cap)


if __name__ == "__main__":
    raise SystemExit(main())
