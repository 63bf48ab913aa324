"""Grounding of forced calls and structured output in the conversation (issue 21): the term and the grammar."""

from __future__ import annotations

import json

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from langchain_aisp.chat import _grammar as grammarlib
from langchain_aisp.chat import _grounding as grounding
from langchain_aisp.chat import _spans as spans
from langchain_aisp.chat._format import OutputFormat, normalize_tool_choice
from langchain_aisp.chat._parse import parse_tool_reply
from langchain_aisp.chat._render import render_tool_call
from langchain_aisp.chat._spans import Candidates, conversation_spans

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
    return render_tool_call(name, args)


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
    assert grounding.value_grounding("你好", conv) == grounding.UNFIT_CREDIT  # a span, but the quoted name cut short
    assert grounding.value_grounding("hello  GROUP!", conv) == span  # case, whitespace, punctuation
    assert grounding.value_grounding("hello group", conv, "name") == span  # a name run
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
    fmt = OutputFormat(tools=(CUSTOMER,), tool_choice="unicode_customer")
    conv = grounding.Conversation.of(ASK)
    good = _call("unicode_customer", {"customer_name": "你好啊集团", "description": "A Chinese technology company"})
    bad = _call("unicode_customer", {"customer_name": "Your Photo", "description": "A Chinese technology company"})
    assert grounding.reply_grounding(good, fmt, conv) == 1.0  # "description" is generative: left out
    assert grounding.reply_grounding(bad, fmt, conv) == 0.0
    assert grounding.reply_grounding("<tool_call>\n{", fmt, conv) == 0.0  # no valid call
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}
    as_json = OutputFormat(json_schema=schema)
    conv = _conv("Ada is 36.")
    span = grounding.SPAN_CREDIT
    assert grounding.reply_grounding('{"name": "Ada", "age": 36}', as_json, conv) == pytest.approx((span + 1) / 2)
    twice = grounding.OVERLAP_FACTOR * (span + 1) / 2  # one value copied into two fields
    assert grounding.reply_grounding('{"name": "36", "age": 36}', as_json, conv) == pytest.approx(twice)
    assert grounding.reply_grounding('{"name": "Eve", "age": 36}', as_json, conv) == 0.5
    assert grounding.reply_grounding("not json", as_json, conv) == 0.0
    assert grounding.reply_grounding("anything", OutputFormat(), conv) == 1.0  # free text: no term


def test_grounded_schema_restricts_free_fields_only():
    spans, numbers = ["Ada", "Ada Lovelace", "London"], [36.0, 2.5]
    kinds: list[tuple[str, str | None]] = []

    def choose(kind, role):
        kinds.append((kind, role))
        return spans

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
    out, changed = grounding.restrict_fields(schema, choose, numbers)
    props = out["properties"]
    assert kinds == [("name", None), ("place", None), ("text", None)]  # name, city (its anyOf option), tags
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
    assert grounding.restrict_fields(joke, choose, numbers) == (joke, False)
    assert grounding.restrict_fields(schema, lambda kind, role: [], [])[1] is False  # nothing to copy
    assert grounding.restrict_fields(joke, choose, numbers, generative=True)[0]["properties"]["setup"] == {
        "enum": spans
    }  # the "auto" rows: generative fields too


def _accepts(lm, grammar: str, text: str) -> bool:
    import llguidance

    tok = grammarlib._tokenizer(lm.tokenizer, lm.head_weight.shape[0], lm.eos_token_ids)
    matcher = llguidance.LLMatcher(tok, grammar, log_level=0)
    ok = matcher.consume_tokens(lm.tokenizer(text, add_special_tokens=False).input_ids)
    return bool(ok) and matcher.is_accepting()


def test_grounded_grammars_of_a_forced_call(tiny_lm):
    fmt = OutputFormat(tools=(CUSTOMER,), tool_choice="unicode_customer")
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


def test_sample_grammars_cycle_one_free_and_three_grounded(tiny_lm):
    fmt = OutputFormat(tools=(CUSTOMER,), tool_choice="unicode_customer")
    quoted, spans = grounding.grounded_grammars(fmt, ASK)
    claimed, *rest = grounding.sample_grammars("FREE", fmt, ASK)
    assert rest == [quoted, spans, quoted]
    # the user quoted one value and the tool has one name field: every sample copies it, even sample 0,
    # whose other fields stay free
    free_text = _call("unicode_customer", {"customer_name": "你好啊集团", "description": "Anything at all"})
    assert _accepts(tiny_lm, claimed, free_text)
    other = _call("unicode_customer", {"customer_name": "Hello Group", "description": "x"})
    assert not _accepts(tiny_lm, claimed, other)
    unquoted = [HumanMessage("Create a customer named Hello Group")]
    (only,) = grounding.grounded_grammars(fmt, unquoted)
    assert grounding.sample_grammars("FREE", fmt, unquoted) == ["FREE", only, only, only]
    joke = OutputFormat(json_schema={"type": "object", "properties": {"punchline": {"type": "string"}}})
    assert grounding.sample_grammars("FREE", joke, ASK) == ["FREE"]


def test_grounded_grammars_of_json_and_when_there_are_none(tiny_lm):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    said = [HumanMessage("王小明今年28岁，住在上海。")]
    (grammar,) = grounding.grounded_grammars(OutputFormat(json_schema=schema), said)
    assert _accepts(tiny_lm, grammar, json.dumps({"name": "王小明", "age": 28}, ensure_ascii=False))
    assert not _accepts(tiny_lm, grammar, json.dumps({"name": "王小明", "age": 29}, ensure_ascii=False))
    joke = {"type": "object", "properties": {"setup": {"type": "string"}, "punchline": {"type": "string"}}}
    assert grounding.grounded_grammars(OutputFormat(json_schema=joke), said) == []
    assert grounding.grounded_grammars(OutputFormat(), said) == []  # free text
    auto = OutputFormat(tools=(CUSTOMER,), tool_choice="auto")
    assert grounding.grounded_grammars(auto, said) == []  # "auto" has its own forced-call rows


# --- the chat model: forced calls and structured output --------------------------------------------


def _customer_model(tiny_lm, reward, **kw):
    from langchain_aisp import AISPChatModel

    params = {"reward": reward, "model": tiny_lm, "num_samples": 4, "num_iterations": 1, "max_tokens": 40, "seed": 0}
    return AISPChatModel(**{**params, **kw}).bind_tools([CUSTOMER], tool_choice="unicode_customer")


def _indifferent(prompt: str, response: str) -> float:
    return 0.0


UNQUOTED = [HumanMessage("Create a customer named Hello Group - a Chinese technology company")]


def _prefers_invented(prompt: str, response: str) -> float:
    """A user reward that says otherwise: 5 for a customer name the conversation does not hold."""
    calls = parse_tool_reply(response, OutputFormat(tools=(CUSTOMER,), tool_choice="any")).tool_calls
    name = calls[0]["args"].get("customer_name", "") if calls else ""
    return 5.0 if name and grounding.value_grounding(name, grounding.Conversation.of(UNQUOTED)) == 0 else 0.0


def test_forced_call_takes_a_grounded_value(tiny_lm):
    """A random model invents names; the grounded samples copy one, and the grounding term picks it."""
    message = _customer_model(tiny_lm, _indifferent).invoke(ASK)
    name = message.tool_calls[0]["args"]["customer_name"]
    assert name in conversation_spans(ASK)[0]
    assert message.response_metadata["aisp"]["reward"] >= 10.0 + grounding.SPAN_CREDIT  # validity + grounding
    off = _customer_model(tiny_lm, _indifferent, grounding_weight=0).invoke(ASK)
    assert off.tool_calls[0]["args"]["customer_name"] not in conversation_spans(ASK)[0]
    assert off.response_metadata["aisp"]["reward"] == 10.0  # validity only


def test_a_user_reward_that_says_otherwise_keeps_its_choice(tiny_lm):
    """Unquoted values: the free sample stays free, and a reward that prefers an invented value keeps it."""
    message = _customer_model(tiny_lm, _prefers_invented).invoke(UNQUOTED)
    name = message.tool_calls[0]["args"]["customer_name"]
    assert grounding.value_grounding(name, grounding.Conversation.of(UNQUOTED)) == 0.0


def test_a_quoted_value_claims_the_name_field_whatever_the_reward(tiny_lm):
    """The user quoted one value and the tool has one name field: no sample can invent the name (the
    documented exception to "a reward that says otherwise wins"; grounding_weight=0 turns it off)."""
    message = _customer_model(tiny_lm, _prefers_invented).invoke(ASK)
    assert message.tool_calls[0]["args"]["customer_name"] == "你好啊集团"
    off = _customer_model(tiny_lm, _prefers_invented, grounding_weight=0).invoke(ASK)
    assert off.tool_calls[0]["args"]["customer_name"] != "你好啊集团"


def test_structured_output_takes_grounded_values(tiny_lm):
    from pydantic import BaseModel

    from langchain_aisp import AISPChatModel

    class Person(BaseModel):
        name: str
        age: int

    said = "王小明今年28岁，住在上海。"
    params = {"model": tiny_lm, "num_samples": 2, "num_iterations": 1, "max_tokens": 40, "seed": 0}
    for method in ("function_calling", "json_schema"):
        person = AISPChatModel(reward=_indifferent, **params).with_structured_output(Person, method=method).invoke(said)
        assert person.age == 28 and person.name in conversation_spans([HumanMessage(said)])[0]


def test_grounding_weight_is_validated(tiny_lm):
    from langchain_aisp import AISPChatModel

    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="grounding_weight must be a finite number >= 0"):
            AISPChatModel(reward=_indifferent, model=tiny_lm, grounding_weight=bad)


# --- the candidates of each kind of field (chat/_spans.py) ---------------------------------------------


def _cands(text: str) -> Candidates:
    return Candidates.of([HumanMessage(text)])


def test_field_kind_and_role():
    assert [spans.field_kind(n) for n in ("date", "birth_date", "customer_id", "zipCode", "city", "origin")] == [
        "date",
        "date",
        "code",
        "code",
        "place",
        "place",
    ]
    assert [spans.field_kind(n) for n in ("name", "customer", "company_name", "product", "query")] == [
        "name",
        "name",
        "name",
        "text",
        "text",
    ]
    assert spans.field_role("from_currency") == "source" and spans.field_role("destination") == "target"
    assert spans.field_role("amount") is None


def test_name_runs_drop_leading_words_and_months():
    assert spans.name_runs("Meet Kwame Mensah, a 41-year-old engineer from Accra.") == ["Kwame Mensah", "Accra"]
    assert spans.name_runs("The Aurora X2 headphones cost 149.99") == ["Aurora X2"]
    assert spans.name_runs("Item: Kettle Pro 3000, price 39.5") == ["Item", "Kettle Pro 3000"]
    assert spans.name_runs("Convert 100 USD to EUR.") == ["USD", "EUR"]
    assert spans.name_runs("Lunch with Fatima Zahra, June 7, at Café Riche") == ["Lunch", "Fatima Zahra", "Café Riche"]
    assert spans.name_runs("Set up an interview with 김민준 on Monday") == ["김민준", "Monday"]  # "Set": a verb
    assert spans.name_runs("Register Άλφα Τεχνική in Greece") == ["Άλφα Τεχνική", "Greece"]


def test_dates_as_written():
    text = "On 14 March 2025, 2024-11-02, 03/09/2026, June 7, 21 August. 10月1日, Dec. 3 and March 2026."
    assert [m.group() for m in spans.DATES.finditer(text)] == [
        "14 March 2025",
        "2024-11-02",
        "03/09/2026",
        "June 7",
        "21 August",
        "10月1日",
        "Dec. 3",
        "March 2026",
    ]


def test_text_candidates_cut_no_unit_and_skip_numbers():
    flight = _cands("Book a flight from Nairobi to Amsterdam on 21 August.")
    assert flight.dates == ("21 August",)
    assert "21" not in flight.text and "on 21" not in flight.text and "Amsterdam on 21" not in flight.text
    assert "Amsterdam on 21 August" in flight.text  # a whole unit inside is fine
    order = _cands("Maria Garcia ordered 3 blue umbrellas at 12.50 each.")
    assert "blue umbrellas" in order.text
    assert not {"3 blue umbrellas", "Garcia", "Maria", "12.50", "ordered 3"} & set(order.text)
    li = _cands("Order from 李娜: 2 台 laptops, 899 each.")
    assert "2" not in li.text and "李娜: 2" not in li.text  # a bare number, a span across a colon
    quoted = _cands("Create a customer named '你好啊集团' (Hello Group)")
    assert "你好" in quoted.every and "你好" not in quoted.text and "你好" not in quoted.names  # cut short


def test_kind_fit_credit():
    conv = grounding.Conversation.of([HumanMessage("Book a flight from Nairobi to Amsterdam on 21 August.")])
    assert grounding.value_grounding("21 August", conv, "date") == grounding.SPAN_CREDIT
    assert grounding.value_grounding("21", conv, "date") == grounding.UNFIT_CREDIT  # cut short
    assert grounding.value_grounding("Book a flight", conv, "place") == grounding.UNFIT_CREDIT  # no name
    assert grounding.value_grounding("Amsterdam", conv, "place", "target") == grounding.SPAN_CREDIT
    assert grounding.value_grounding("Amsterdam", conv, "place", "source") == grounding.UNFIT_CREDIT  # "to"
    schema = {"properties": {"origin": {"type": "string"}, "destination": {"type": "string"}}}
    right = grounding.grounding({"origin": "Nairobi", "destination": "Amsterdam"}, schema, conv)
    swapped = grounding.grounding({"origin": "Amsterdam", "destination": "Nairobi"}, schema, conv)
    assert right == grounding.SPAN_CREDIT and swapped == grounding.UNFIT_CREDIT


def test_directions_places_and_names():
    money = _cands("Convert 100 USD to EUR.")
    assert money.strings("text", "target") == ["EUR"]
    assert "EUR" not in money.strings("text", "source") and "USD" in money.strings("text", "source")
    fly = _cands("I need to fly to Reykjavík from Boston, leaving 2025-01-15.")
    assert fly.strings("place", "source") == ["Boston"] and fly.strings("place", "target") == ["Reykjavík"]
    cn = _cands("从北京飞往东京，日期是10月1日。")
    assert "北京" in cn.strings("place", "source") and "东京" not in cn.strings("place", "source")
    assert "东京" in cn.strings("place", "target") and "北京" not in cn.strings("place", "target")
    ada = _cands("Ada Lovelace is 36 and lives in London.")
    assert ada.strings("place") == ["London"] and "London" not in ada.strings("name")
    jp = _cands("田中花子さんは19歳で、京都に住んでいます。")
    assert "京都" in jp.strings("place") and "田中花子" not in jp.strings("place")
    assert "田中花子" in jp.strings("name") and "京都" not in jp.strings("name")
    assert jp.names == ("田中花子", "京都")  # no lone kanji of a verb or counter (住んで, 19歳で)


def test_text_fields_apart_from_name_fields():
    chloe = _cands("Chloe Dubois buys 25 croissants; each costs 1.20.")
    assert "Chloe Dubois" in chloe.strings("text")
    apart = chloe.strings("text", None, apart=True)
    assert "croissants" in apart and not [s for s in apart if "Chloe" in s]
    order = {
        "type": "object",
        "properties": {"customer": {"type": "string"}, "product": {"type": "string"}},
    }
    out, _ = grounding.grounded_schema(order, chloe)
    assert out["properties"]["customer"]["enum"] == ["Chloe Dubois"]
    assert "Chloe Dubois" not in out["properties"]["product"]["enum"]
    alone = {"type": "object", "properties": {"query": {"type": "string"}}}  # no name field: names allowed
    assert "Chloe Dubois" in grounding.grounded_schema(alone, chloe)[0]["properties"]["query"]["enum"]


def test_quoted_values_claim_name_fields_when_there_are_enough():
    two = {
        "type": "object",
        "properties": {"customer_name": {"type": "string"}, "contact_name": {"type": "string"}},
    }
    one = {"type": "object", "properties": {"customer_name": {"type": "string"}, "notes": {"type": "string"}}}
    asked = Candidates.of(ASK)
    assert grounding.claims(one, asked) and not grounding.claims(two, asked)
    assert not grounding.claims(one, _cands("Create a customer named Hello Group"))  # nothing quoted
    claimed, changed = grounding.grounded_schema(one, asked, "claim")
    assert changed and claimed["properties"] == {"customer_name": {"enum": ["你好啊集团"]}, "notes": {"type": "string"}}


def test_auto_rows_give_the_top_tool_every_second_row():
    from langchain_aisp.chat._auto import auto_rows

    assert auto_rows(["a", "b", "c", "d"]) == ["a", "b", "a", "c", "a", "d"]
    assert auto_rows(["a", "b"]) == ["a", "b"] and auto_rows(["a"]) == ["a"]


def test_grounding_is_skipped_by_construction_without_tools_or_schema(tiny_lm):
    from langchain_aisp import AISPChatModel

    model = AISPChatModel(reward=_indifferent, model=tiny_lm, num_samples=2, num_iterations=1, max_tokens=8)
    plain = model.prepare([HumanMessage("Ada is 36.")])._job
    assert plain.conversation is None  # free text: no candidates read, no term, one grammar (none)
    auto = normalize_tool_choice("auto", ["unicode_customer"])
    job = model.prepare(ASK, tools=[CUSTOMER], tool_choice=auto)._job
    assert job.conversation is not None and job.forced is not None  # "auto": the term on its forced rows
