"""One implementation of each shared helper (issue 18): the module:qualname importer, the stream splitter,
``as_reward``, the sentiment / non-toxicity rewards of the bench."""

from __future__ import annotations

import json
import sys
import uuid

import pytest
from langchain_core.messages import HumanMessage

from langchain_aisp._imports import import_object
from langchain_aisp._text import stream_pieces
from langchain_aisp.rewards import (
    EmbeddingSimilarityReward,
    LengthReward,
    NonToxicityReward,
    SentimentReward,
    import_reward,
)

CONV = [HumanMessage("How was your day?")]


@pytest.fixture
def module_dir(tmp_path, monkeypatch):
    """A folder holding ``mod_<id>.py`` (a function and a Reward subclass); sys.path restored afterwards."""
    name = f"mod_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        "from langchain_aisp.rewards import LengthReward\n"
        "def score(prompt, response):\n    return 1.0\n"
        "class Short(LengthReward):\n    def __init__(self):\n        super().__init__(max_words=3)\n",
        encoding="utf-8",
    )
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield tmp_path, name
    sys.modules.pop(name, None)


def test_import_object_from_an_app_dir_and_a_file(module_dir):
    folder, name = module_dir
    with pytest.raises(ImportError, match=r"no module named '" + name + r"' on sys\.path \(the working folder"):
        import_object(f"{name}:score")
    assert import_object(f"{name}:score", app_dir=folder)("p", "r") == 1.0
    assert str(folder.resolve()) == sys.path[0]  # as uvicorn --app-dir: first on the path
    assert import_object(f"{folder / name}.py:score")("p", "r") == 1.0  # a file path


def test_import_object_errors_name_what_is_wrong(module_dir, tmp_path):
    folder, name = module_dir
    for bad in ("no_colon", ":x", "mod:"):
        with pytest.raises(ValueError, match=r"expected 'package\.module:qualname'"):
            import_object(bad)
    with pytest.raises(AttributeError, match=f"module '{name}' has no attribute 'nope'"):
        import_object(f"{name}:nope", app_dir=folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImportError, match=f"in the app dir '{empty.resolve()}' or on sys.path"):
        import_object("absent_mod_xyz:f", app_dir=empty)
    with pytest.raises(ImportError, match="is not a folder"):
        import_object("os:getcwd", app_dir=tmp_path / "missing")


def test_import_reward_instantiates_reward_classes_for_every_caller(module_dir):
    from langchain_aisp.bench.scorers import load_reward
    from langchain_aisp.chat_models import AISPChatModel

    folder, name = module_dir
    reward = import_reward(f"{name}:Short", app_dir=folder)
    assert isinstance(reward, LengthReward) and reward.max_words == 3
    assert isinstance(load_reward(f"{name}:Short")[1], LengthReward)  # the bench: same importer
    model = AISPChatModel(reward=f"{name}:Short")  # the chat model: same importer
    assert isinstance(model.reward, LengthReward)


def test_stream_pieces_concatenate_back():
    for text in ["", "one", " Hello,  world!\n\nBye ", "\n"]:
        pieces = stream_pieces(text)
        assert "".join(pieces) == text and all(pieces)
    assert stream_pieces("a b") == ["a ", "b"]


def test_chat_model_and_server_stream_the_same_pieces():
    from langchain_core.messages import AIMessage

    from langchain_aisp.serve.protocol import chunk_events

    message = AIMessage(" Hello,  world!\n", response_metadata={"finish_reason": "stop", "aisp": {}})
    events = list(chunk_events(message, completion_id="x", model="m", aisp={}, include_usage=False))
    deltas = [json.loads(e[6:])["choices"][0]["delta"].get("content") for e in events[1:-2]]
    assert deltas == stream_pieces(message.content)


def test_sentiment_backends():
    texts = ["What a wonderful, happy day!", "It is a table.", "This is awful."]
    vader = SentimentReward().score([CONV] * 3, texts)
    blob = SentimentReward(backend="textblob").score([CONV] * 3, texts)
    from textblob import TextBlob

    assert blob == [TextBlob(t).sentiment.polarity for t in texts] and blob[0] > blob[1] > blob[2]
    assert vader != blob and vader[0] > vader[1] > vader[2]
    with pytest.raises(ValueError, match="backend must be 'vader' or 'textblob', got 'x'"):
        SentimentReward(backend="x")  # type: ignore[arg-type]


def test_bench_builtins_are_the_rewards_package_classes_and_fail_loudly(monkeypatch):
    from langchain_aisp.bench.scorers import builtin_reward

    sentiment, nontoxic, relevance = (builtin_reward(n) for n in ("sentiment", "nontoxic", "relevance"))
    assert type(sentiment) is SentimentReward and sentiment.backend == "textblob"
    assert type(nontoxic) is NonToxicityReward
    assert type(relevance) is EmbeddingSimilarityReward and relevance.target == "prompt"
    monkeypatch.setitem(sys.modules, "profanity_check", None)  # not installed: no silent fallback
    with pytest.raises(ImportError, match="pip install 'langchain-aisp\\[rewards\\]'"):
        builtin_reward("nontoxic").score([CONV], ["hi"])


def test_the_encoder_is_neutral_and_the_rewards_do_not_import_the_embeddings_surface():
    import subprocess

    code = (
        "import json, sys; import langchain_aisp.sentence_encoder; a = sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('langchain_core', 'langchain', 'pydantic')); import langchain_aisp.rewards; "
        "print(json.dumps([a, 'langchain_aisp.embeddings' in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    surfaces, embeddings_loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert surfaces == [] and embeddings_loaded is False
    from langchain_aisp import embeddings, sentence_encoder

    assert embeddings.load_encoder is sentence_encoder.load_encoder  # one implementation, re-exported
