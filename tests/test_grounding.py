"""Grounding of forced calls and structured output in the conversation (issue 21): the term and the grammar."""

from __future__ import annotations

import json

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from langchain_aisp import _chat_format as fmtlib
from langchain_aisp import _grammar_llguidance as grammarlib
from langchain_aisp.chat import _grounding as grounding

CUSTOMER = {
    "name": "unicode_customer",
    "description": "Tool for creating a customer with Unicode name.",
    "parameters": {
        "type": "object",
        "properties": {
            "customer_name": {"type": "string", "description": "The customer's name"},
            "description": {"type": "string", "description": "A description of the customer"},
        },
        "required": ["customer_name", "description"],
    },
}
ASK = [HumanMessage("Create a customer named '你好啊集团' (Hello Group) - a Chinese technology company")]


def _conv(text: str) -> grounding.Conversation:
    return grounding.Conversation.of([HumanMessage(text)])


def _call(name: str, args: dict) -> str:
    return fmtlib.render_tool_call(name, args)


def test_normalize_is_light():
    assert grounding.normalize("  Ada\tLOVELACE! ") == "ada lovelace"
    assert grounding.normalize("Ｏｓｌｏ") == "oslo"  # NFKC: full-width letters
    assert grounding.normalize("Al-Farsi «Самовар-5»") == "al farsi самовар 5"
    assert grounding.units("王小明 28") == ["王", "小", "明", "28"]


def test_value_grounding_copied_normalised_partial_invented():
    conv = _conv("Create a customer named '你好啊集团' (Hello Group) - a Chinese technology company")
    assert grounding.value_grounding("你好啊集团", conv) == 1.0  # the user quoted it
    assert conv.quoted == ("你好啊集团",)
    span = grounding.SPAN_CREDIT
    assert grounding.value_grounding("你好", conv) == span  # a span starting inside an unspaced run
    assert grounding.value_grounding("hello  GROUP!", conv) == span  # case, whitespace, punctuation
    assert grounding.value_grounding("Group Hello", conv) == 0.5  # every word, not as a span
    assert grounding.value_grounding("Hello Photo", conv) == pytest.approx(0.5 * 5 / 10)
    assert grounding.value_grounding("Your Photo", conv) == 0.0
    assert grounding.value_grounding("", conv) == 0.0
    assert grounding.value_grounding("Hello G", conv) == pytest.approx(0.5 * 5 / 6)  # "g" is no word of it


def test_quoted_values():
    conv = _conv("""Name it "Blue Fox", or «Самовар-5», or 「東京タワー」; Ada's and Bob's are no quotes.""")
    assert conv.quoted == ("Blue Fox", "Самовар-5", "東京タワー")
    assert grounding.value_grounding("blue fox", conv) == 1.0
    assert grounding.value_grounding("Ada", conv) == grounding.SPAN_CREDIT


def test_numbers_are_grounded_as_written():
    conv = _conv("王小明今年28岁. Order 1,500 units at 12.50 each, X2")
    assert grounding.value_grounding(28, conv) == 1.0  # next to an unspaced script
    assert grounding.value_grounding(1500, conv) == 1.0  # thousands separator
    assert grounding.value_grounding(12.5, conv) == 1.0
    assert grounding.value_grounding(2, conv) == 0.0  # part of the word "X2", not a number
    assert grounding.value_grounding(36, conv) == 0.0
    assert grounding.value_grounding(True, conv) == 1.0  # not a value the conversation supplies


def test_conversation_reads_user_and_tool_text_only():
    conv = grounding.Conversation.of(
        [
            SystemMessage("The secret is Zanzibar."),
            HumanMessage("Weather in Oslo?"),
            AIMessage("Let me check Lima."),
            ToolMessage("Sunny in Bergen", tool_call_id="1"),
        ]
    )
    assert grounding.value_grounding("Oslo", conv) == grounding.SPAN_CREDIT
    assert grounding.value_grounding("Bergen", conv) == grounding.SPAN_CREDIT
    assert grounding.value_grounding("Zanzibar", conv) == 0.0
    assert grounding.value_grounding("Lima", conv) == 0.0


def test_grounding_skips_what_the_conversation_cannot_supply():
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "unit": {"enum": ["celsius", "fahrenheit"]},
            "urgent": {"type": "boolean"},
            "summary": {"type": "string"},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
    }
    conv = _conv("Ada is 36.")
    value = {"name": "Ada", "unit": "celsius", "urgent": True, "summary": "A person.", "note": None}
    assert grounding.grounding(value, schema, conv) == grounding.SPAN_CREDIT  # only "name" counts
    assert grounding.grounding({**value, "name": "Bob"}, schema, conv) == 0.0
    assert grounding.grounding({"unit": "celsius"}, schema, conv) == 1.0  # nothing to ground
    joke = {"setup": "Why?", "punchline": "Because.", "rating": 7}
    joke_schema = {"properties": {"rating": {"type": "integer", "description": "How funny the joke is"}}}
    assert grounding.grounding(joke, joke_schema, conv) == 1.0


def test_grounding_is_the_mean_over_leaves_and_follows_refs():
    schema = {
        "type": "object",
        "properties": {"people": {"type": "array", "items": {"$ref": "#/$defs/P"}}},
        "$defs": {"P": {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}},
    }
    conv = _conv("Ada is 36, Bob is 41.")
    value = {"people": [{"name": "Ada", "age": 36}, {"name": "Carl", "age": 41}]}
    assert grounding.grounding(value, schema, conv) == pytest.approx((grounding.SPAN_CREDIT + 2) / 4)


def test_a_value_copied_into_two_fields_counts_less():
    conv = _conv("Chloe Dubois buys 25 croissants.")
    schema = {"properties": {"customer": {"type": "string"}, "product": {"type": "string"}}}
    right = grounding.grounding({"customer": "Chloe Dubois", "product": "croissants"}, schema, conv)
    twice = grounding.grounding({"customer": "Chloe", "product": "Chloe Dubois"}, schema, conv)
    assert right == grounding.SPAN_CREDIT
    assert twice == pytest.approx(grounding.SPAN_CREDIT * grounding.OVERLAP_FACTOR)
    assert grounding.grounding({"customer": "Chloe", "product": "Chloe"}, schema, conv) == twice


def test_is_generative():
    assert grounding.is_generative("punchline", {})
    assert grounding.is_generative("shortSummary", {})
    assert grounding.is_generative("rating", {"description": "How funny the joke is"})
    assert not grounding.is_generative("customer_name", {"description": "The name as written in the text"})
    assert not grounding.is_generative("city", {})


def test_reply_grounding_of_calls_and_json():
    fmt = fmtlib.OutputFormat(tools=(CUSTOMER,), tool_choice="unicode_customer")
    conv = grounding.Conversation.of(ASK)
    good = _call("unicode_customer", {"customer_name": "你好啊集团", "description": "A Chinese technology company"})
    bad = _call("unicode_customer", {"customer_name": "Your Photo", "description": "A Chinese technology company"})
    assert grounding.reply_grounding(good, fmt, conv) == 1.0  # "description" is generative: left out
    assert grounding.reply_grounding(bad, fmt, conv) == 0.0
    assert grounding.reply_grounding("<tool_call>\n{", fmt, conv) == 0.0  # no valid call
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}
    as_json = fmtlib.OutputFormat(json_schema=schema)
    conv = _conv("Ada is 36.")
    span = grounding.SPAN_CREDIT
    assert grounding.reply_grounding('{"name": "Ada", "age": 36}', as_json, conv) == pytest.approx((span + 1) / 2)
    twice = grounding.OVERLAP_FACTOR * (span + 1) / 2  # one value copied into two fields
    assert grounding.reply_grounding('{"name": "36", "age": 36}', as_json, conv) == pytest.approx(twice)
    assert grounding.reply_grounding('{"name": "Eve", "age": 36}', as_json, conv) == 0.5
    assert grounding.reply_grounding("not json", as_json, conv) == 0.0
    assert grounding.reply_grounding("anything", fmtlib.OutputFormat(), conv) == 1.0  # free text: no term


def test_grounded_schema_restricts_free_fields_only():
    spans, numbers = ["Ada", "Ada Lovelace", "London"], [36.0, 2.5]
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 3},
            "age": {"type": "integer", "minimum": 0},
            "height": {"type": "number"},
            "unit": {"type": "string", "enum": ["m", "ft"]},
            "email": {"type": "string", "format": "email"},
            "summary": {"type": "string"},
            "city": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
    }
    out, changed = grounding.grounded_schema(schema, spans, numbers)
    props = out["properties"]
    assert changed
    assert props["name"] == {"enum": ["Ada"]}  # maxLength 3 filters the spans
    assert props["age"] == {"enum": [36]}
    assert props["height"] == {"enum": [36, 2.5]}
    assert props["unit"] == schema["properties"]["unit"]
    assert props["email"] == schema["properties"]["email"]
    assert props["summary"] == schema["properties"]["summary"]
    assert props["city"]["anyOf"] == [{"enum": spans}, {"type": "null"}]
    assert props["tags"]["items"] == {"enum": spans}
    assert schema["properties"]["name"] == {"type": "string", "maxLength": 3}  # the input is not changed
    joke = {"type": "object", "properties": {"setup": {"type": "string"}, "punchline": {"type": "string"}}}
    assert grounding.grounded_schema(joke, spans, numbers) == (joke, False)
    assert grounding.grounded_schema(schema, [], [])[1] is False  # nothing to copy


def _accepts(lm, grammar: str, text: str) -> bool:
    import llguidance

    tok = grammarlib._tokenizer(lm.tokenizer, lm.head_weight.shape[0], lm.eos_token_ids)
    matcher = llguidance.LLMatcher(tok, grammar, log_level=0)
    ok = matcher.consume_tokens(lm.tokenizer(text, add_special_tokens=False).input_ids)
    return bool(ok) and matcher.is_accepting()


def test_grounded_grammars_of_a_forced_call(tiny_lm):
    fmt = fmtlib.OutputFormat(tools=(CUSTOMER,), tool_choice="unicode_customer")
    quoted, spans = grounding.grounded_grammars(fmt, ASK)  # the quoted values, then every span
    copied = _call("unicode_customer", {"customer_name": "你好啊集团", "description": "Anything at all"})
    other = _call("unicode_customer", {"customer_name": "Hello Group", "description": "Anything at all"})
    invented = _call("unicode_customer", {"customer_name": "Your Photo", "description": "Anything at all"})
    assert _accepts(tiny_lm, quoted, copied) and _accepts(tiny_lm, spans, copied)
    assert not _accepts(tiny_lm, quoted, other) and _accepts(tiny_lm, spans, other)
    assert not _accepts(tiny_lm, spans, invented)
    unquoted = [HumanMessage("Create a customer named Hello Group")]
    assert len(grounding.grounded_grammars(fmt, unquoted)) == 1
    plain = grammarlib.tool_call_grammar(list(fmt.tools), choice="unicode_customer")
    assert _accepts(tiny_lm, plain, invented)


def test_sample_grammars_cycle_one_free_and_three_grounded():
    fmt = fmtlib.OutputFormat(tools=(CUSTOMER,), tool_choice="unicode_customer")
    quoted, spans = grounding.grounded_grammars(fmt, ASK)
    assert grounding.sample_grammars("FREE", fmt, ASK) == ["FREE", quoted, spans, quoted]
    unquoted = [HumanMessage("Create a customer named Hello Group")]
    (only,) = grounding.grounded_grammars(fmt, unquoted)
    assert grounding.sample_grammars("FREE", fmt, unquoted) == ["FREE", only, only, only]
    joke = fmtlib.OutputFormat(json_schema={"type": "object", "properties": {"punchline": {"type": "string"}}})
    assert grounding.sample_grammars("FREE", joke, ASK) == ["FREE"]


def test_grounded_grammars_of_json_and_when_there_are_none(tiny_lm):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    said = [HumanMessage("王小明今年28岁，住在上海。")]
    (grammar,) = grounding.grounded_grammars(fmtlib.OutputFormat(json_schema=schema), said)
    assert _accepts(tiny_lm, grammar, json.dumps({"name": "王小明", "age": 28}, ensure_ascii=False))
    assert not _accepts(tiny_lm, grammar, json.dumps({"name": "王小明", "age": 29}, ensure_ascii=False))
    joke = {"type": "object", "properties": {"setup": {"type": "string"}, "punchline": {"type": "string"}}}
    assert grounding.grounded_grammars(fmtlib.OutputFormat(json_schema=joke), said) == []
    assert grounding.grounded_grammars(fmtlib.OutputFormat(), said) == []  # free text
    auto = fmtlib.OutputFormat(tools=(CUSTOMER,), tool_choice="auto")
    assert grounding.grounded_grammars(auto, said) == []  # "auto" has its own forced-call rows


# --- the chat model: forced calls and structured output --------------------------------------------


def _customer_model(tiny_lm, reward, **kw):
    from langchain_aisp import AISPChatModel

    params = {"reward": reward, "llm": tiny_lm, "num_samples": 4, "num_iterations": 1, "max_tokens": 40, "seed": 0}
    return AISPChatModel(**{**params, **kw}).bind_tools([CUSTOMER], tool_choice="unicode_customer")


def _indifferent(prompt: str, response: str) -> float:
    return 0.0


def _prefers_invented(prompt: str, response: str) -> float:
    """A user reward that says otherwise: 5 for a customer name the conversation does not hold."""
    calls = fmtlib.parse_tool_reply(response, fmtlib.OutputFormat(tools=(CUSTOMER,), tool_choice="any")).tool_calls
    name = calls[0]["args"].get("customer_name", "") if calls else ""
    return 5.0 if name and grounding.value_grounding(name, grounding.Conversation.of(ASK)) == 0 else 0.0


def test_forced_call_takes_a_grounded_value(tiny_lm):
    """A random model invents names; the grounded samples copy one, and the grounding term picks it."""
    message = _customer_model(tiny_lm, _indifferent).invoke(ASK)
    name = message.tool_calls[0]["args"]["customer_name"]
    assert name in fmtlib.conversation_spans(ASK)[0]
    assert message.response_metadata["aisp"]["reward"] >= 10.0 + grounding.SPAN_CREDIT  # validity + grounding
    off = _customer_model(tiny_lm, _indifferent, grounding_weight=0).invoke(ASK)
    assert off.tool_calls[0]["args"]["customer_name"] not in fmtlib.conversation_spans(ASK)[0]
    assert off.response_metadata["aisp"]["reward"] == 10.0  # validity only


def test_a_user_reward_that_says_otherwise_keeps_its_choice(tiny_lm):
    message = _customer_model(tiny_lm, _prefers_invented).invoke(ASK)
    name = message.tool_calls[0]["args"]["customer_name"]
    assert grounding.value_grounding(name, grounding.Conversation.of(ASK)) == 0.0


def test_structured_output_takes_grounded_values(tiny_lm):
    from pydantic import BaseModel

    from langchain_aisp import AISPChatModel

    class Person(BaseModel):
        name: str
        age: int

    said = "王小明今年28岁，住在上海。"
    params = {"llm": tiny_lm, "num_samples": 2, "num_iterations": 1, "max_tokens": 40, "seed": 0}
    for method in ("function_calling", "json_schema"):
        person = AISPChatModel(reward=_indifferent, **params).with_structured_output(Person, method=method).invoke(said)
        assert person.age == 28 and person.name in fmtlib.conversation_spans([HumanMessage(said)])[0]


def test_grounding_weight_is_validated(tiny_lm):
    from langchain_aisp import AISPChatModel

    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="grounding_weight must be a finite number >= 0"):
            AISPChatModel(reward=_indifferent, model=tiny_lm, grounding_weight=bad)
