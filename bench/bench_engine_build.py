"""Decode speed of the portable llama.cpp build against native builds, on this machine.

The portable build (scripts/llama_wheel.py: explicit instruction sets, never AMX) must stay
within 15 % of a native one. Builds compared, each installed into its own folder and run in
its own process on the same model, prompt and thread count:

- ``portable``: the wheel `make setup` installs (from the cache, keyed by CPU);
- ``native-no-amx``: ``-march=native`` without the AMX instructions;
- ``native``: plain ``-march=native``, what the project built before (on a virtual CPU
  that reports AMX it dies with SIGILL: reported as such).

Native wheels are compiled once into ~/.cache/meridian-bot/bench-wheels (4-13 min each).

    .venv/bin/python bench/bench_engine_build.py [--tokens 128] [--runs 3] [--skip-native]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import llama_wheel  # noqa: E402

CACHE = Path("~/.cache/meridian-bot").expanduser()
NATIVE_FLAGS = {
    "native": "-DGGML_NATIVE=ON",
    "native-no-amx": "-DGGML_NATIVE=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF "
    "-DGGML_AMX_BF16=OFF -DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' "
    "-DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'",
}

_DECODE = r"""
import json, sys, time
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=1024, n_threads=int(sys.argv[3]), verbose=False)
prompt = "Write a short, friendly paragraph about returning a sweater to an online shop."
llm(prompt, max_tokens=8, temperature=0)  # warm-up
rates = []
for _ in range(int(sys.argv[4])):
    started = time.perf_counter()
    out = llm(prompt, max_tokens=int(sys.argv[2]), temperature=0, seed=1)
    n = out["usage"]["completion_tokens"]
    rates.append(n / (time.perf_counter() - started))
print(json.dumps(rates))
"""


def native_wheel(name: str) -> Path:
    directory = CACHE / "bench-wheels" / name
    wheels = sorted(directory.glob("*.whl"))
    if wheels and (directory / "done").exists():
        return wheels[-1]
    directory.mkdir(parents=True, exist_ok=True)
    print(f"compiling the {name} build (once)...", file=sys.stderr, flush=True)
    env = {**os.environ, "CMAKE_ARGS": NATIVE_FLAGS[name], "FORCE_CMAKE": "1"}
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-cache-dir",
         "--no-binary", llama_wheel.PACKAGE, "--wheel-dir", str(directory),
         f"{llama_wheel.PACKAGE}=={llama_wheel.VERSION}"],
        env=env, check=True,
    )  # fmt: skip
    (directory / "done").write_text("")
    return sorted(directory.glob("*.whl"))[-1]


def decode_rates(wheel: Path, model: Path, tokens: int, threads: int, runs: int) -> list[float]:
    with tempfile.TemporaryDirectory() as target:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", target,
             str(wheel)],
            check=True,
        )  # fmt: skip
        env = {**os.environ, "PYTHONPATH": target}
        proc = subprocess.run(
            [sys.executable, "-c", _DECODE, str(model), str(tokens), str(threads), str(runs)],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(llama_wheel.smoke_failure(proc.returncode, proc.stderr))
    rates: list[float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-native", action="store_true", help="portable build only")
    args = parser.parse_args()
    model = Path(
        subprocess.run(
            [str(ROOT / ".venv/bin/bot"), "model", "path"], capture_output=True, text=True,
            check=True,
        ).stdout.strip()
    )  # fmt: skip
    chosen = llama_wheel.options(llama_wheel.cpu_flags())
    portable = llama_wheel._cached_wheel(llama_wheel._wheel_dir(CACHE / "wheels", chosen))
    if portable is None:
        raise SystemExit("no portable wheel cached: run `make setup` first")
    builds = {f"portable ({llama_wheel.tag(chosen)})": portable}
    if not args.skip_native:
        builds |= {name: native_wheel(name) for name in ("native-no-amx", "native")}
    print(f"model {model.name}, {args.tokens} tokens x {args.runs} runs, {args.threads} threads")
    baseline: float | None = None
    for name, wheel in builds.items():
        try:
            rates = decode_rates(wheel, model, args.tokens, args.threads, args.runs)
        except RuntimeError as exc:
            print(f"  {name:>24}: does not run here: {exc}")
            continue
        median = statistics.median(rates)
        baseline = baseline or median
        print(
            f"  {name:>24}: decode {median:6.1f} tok/s (runs: "
            f"{', '.join(f'{r:.1f}' for r in rates)})  = {median / baseline:.2f}x portable"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
