"""One JSON finder and one JSON-schema validator (langchain_aisp._json), shared by the chat model and the rewards."""

from __future__ import annotations

import pytest

from langchain_aisp._json import close_objects, find_json, validate
from langchain_aisp.chat._parse import parse_json_reply, schema_errors
from langchain_aisp.rewards import JSONSchemaReward, extract_json

PERSON = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


def test_find_json_candidates_in_order():
    assert find_json('{"a": 1}').value == {"a": 1}
    assert find_json('Sure: {"a": 1} done').value == {"a": 1}  # the first object of the text
    assert find_json("```\n[1, 2]\n```").value == [1, 2]  # a fence's body as a whole
    assert find_json('```json\nnot json\n```\n```json\n{"b": 2}\n```').value == {"b": 2}
    assert find_json('```json\n{"open": true}').value == {"open": True}  # an unclosed fence runs to the end
    assert find_json("no json {here") is None
    assert find_json("") is None


def test_find_json_lenient_closes_a_cut_object_and_says_so():
    cut = '{"name": "Ad'
    assert find_json(cut) is None
    found = find_json(cut, lenient=True)
    assert found is not None and found.value == {"name": "Ad"} and found.complete is False
    assert find_json('{"name": "Ada"}', lenient=True).complete is True


def test_the_chat_model_and_the_reward_find_the_same_json():
    for text in ['x {"a": 1}', '```json\n{"a": [1]}\n```', "[1]", "nothing"]:
        found = find_json(text)
        if found is None:
            assert extract_json(text) is extract_json("nothing")  # the private "missing" sentinel
        else:
            assert extract_json(text) == found.value
        value, error = parse_json_reply(text)
        assert (error is None) == (found is not None and isinstance(found.value, dict))
        assert value == (found.value if error is None else None)


def test_validate_follows_json_schema_objects_are_open():
    assert validate({"name": "Ada", "age": 3}, PERSON) == []  # an extra property is allowed
    assert validate({"name": "Ada", "age": 3}, {**PERSON, "additionalProperties": False}) == [
        "$: unexpected property 'age'"
    ]
    assert validate({"name": "A", "n": "x"}, {**PERSON, "additionalProperties": {"type": "integer"}}) == [
        "$.n: expected integer, got str"
    ]
    assert validate({}, PERSON) == ["$: missing required property 'name'"]


def test_validate_keywords():
    assert validate(True, {"type": "integer"}) == ["$: expected integer, got bool"]
    assert validate(1.0, {"type": "integer"}) == []
    assert validate(None, {"type": ["string", "null"]}) == []
    assert validate("c", {"enum": ["a", "b"]}) == ["$: 'c' is not one of ['a', 'b']"]
    assert validate(2, {"const": 1}) == ["$: 2 is not the constant 1"]
    assert validate([1, "x"], {"items": {"type": "integer"}}) == ["$[1]: expected integer, got str"]
    assert validate("x", {"anyOf": [{"type": "integer"}, {"type": "null"}]}) == ["$: matches none of anyOf"]
    assert validate(1, {"oneOf": [{"type": "integer"}, {"type": "number"}]}) == [
        "$: matches 2 of oneOf (exactly one required)"
    ]
    assert validate(1.5, {"oneOf": [{"type": "integer"}, {"type": "number"}]}) == []
    assert validate(5, {"allOf": [{"type": "integer"}, {"enum": [1]}]}) == ["$: 5 is not one of [1]"]
    ref = {"$defs": {"P": PERSON}, "type": "object", "properties": {"p": {"$ref": "#/$defs/P"}}}
    assert validate({"p": {}}, ref) == ["$.p: missing required property 'name'"]


def test_chat_model_rule_is_the_closed_schema_as_the_grammar_decodes_it():
    """docs/chat_model.md: objects are closed unless the schema says otherwise; the reward keeps them open."""
    value = {"name": "Ada", "age": 3}
    assert schema_errors(value, PERSON) == "$: unexpected property 'age'"
    assert schema_errors(value, {**PERSON, "additionalProperties": True}) is None
    assert close_objects(PERSON)["additionalProperties"] is False
    reward = JSONSchemaReward(PERSON, validator="minimal")
    assert reward.errors('{"name": "Ada", "age": 3}') == []


@pytest.mark.parametrize("validator", ["minimal", "auto"])
def test_reward_validators_agree_on_extra_properties(validator):
    """The built-in check and the jsonschema package give the same verdicts (JSON Schema semantics)."""
    reward = JSONSchemaReward({**PERSON, "additionalProperties": False}, validator=validator)
    assert [bool(reward.errors(t)) for t in ['{"name": "A"}', '{"name": "A", "x": 1}']] == [False, True]
    open_reward = JSONSchemaReward(PERSON, validator=validator)
    assert open_reward.errors('{"name": "A", "x": 1}') == []
