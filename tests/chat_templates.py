"""Minimal chat templates of our own (ChatML tokens of the SmolLM2 tokenizer) for thinking models and for
each tool-call format; shared by the reasoning, tool-format and chat-model tests."""

from __future__ import annotations

import copy
from typing import Any

_TURNS = (
    "{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{% endfor %}"
)

_CHATML_TAIL = """{% elif message['role'] != 'system' %}<|im_start|>{{ message['role'] }}
{{ message['content'] }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""
"""The end of the ChatML-like templates below: other turns, then the generation prompt."""

THINK = (
    _TURNS + "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}"
    "{% endif %}"
)
"""Qwen3-like: the model opens ``<think>`` itself; ``enable_thinking=False`` closes an empty section."""

PREFILLED_THINK = (
    _TURNS + "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>\\n' }}{% endif %}"
    "{# the answer follows </think> #}"
)
"""DeepSeek-R1-distill-like: the generation prompt opens the think section."""

HERMES = (
    """{%- if tools %}<|im_start|>system
{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}

{% endif %}# Tools

<tools>
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}</tools>

For each function call, return a json object within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
{% elif messages[0]['role'] == 'system' %}<|im_start|>system
{{ messages[0]['content'] }}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message['role'] == 'assistant' %}<|im_start|>assistant
{{ message['content'] or '' }}
{%- if message.tool_calls is defined and message.tool_calls %}{% for call in message.tool_calls %}<tool_call>
{"name": {{ call.function.name | tojson }}, "arguments": {{ call.function.arguments | tojson }}}
</tool_call>{% endfor %}{% endif %}<|im_end|>
{% elif message['role'] == 'tool' %}<|im_start|>user
<tool_response>
{{ message['content'] }}
</tool_response><|im_end|>
"""
    + _CHATML_TAIL
)
"""Qwen 2.5-like: tools in the system turn, calls in ``<tool_call>`` blocks, results as ``<tool_response>``."""

LLAMA3 = (
    """{%- for message in messages %}{% if message['role'] == 'system' %}<|im_start|>system
{{ message['content'] }}<|im_end|>
{% endif %}{% endfor %}
{%- if tools %}<|im_start|>user
Given the following functions, please respond with a JSON for a function call with its proper arguments.

Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.

{% for tool in tools %}{{ tool | tojson }}

{% endfor %}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message['role'] == 'assistant' and message.tool_calls is defined and message.tool_calls %}<|im_start|>assistant
{% for call in message.tool_calls %}{% if not loop.first %}; {% endif -%}
{"name": {{ call.function.name | tojson }}, "parameters": {{ call.function.arguments | tojson }}}
{%- endfor %}<|im_end|>
{% elif message['role'] == 'tool' %}<|im_start|>ipython
{{ message['content'] }}<|im_end|>
"""
    + _CHATML_TAIL
)
"""Llama 3.1-like: a call is the JSON object ``{"name", "parameters"}``; results in the ``ipython`` role."""

MISTRAL = """{%- if tools %}[AVAILABLE_TOOLS] {{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}
{%- for message in messages %}
{%- if message['role'] in ('user', 'system') %}[INST] {{ message['content'] }}[/INST]
{%- elif message['role'] == 'assistant' and message.tool_calls is defined and message.tool_calls %}[TOOL_CALLS] [
{%- for call in message.tool_calls %}{% if not loop.first %}, {% endif -%}
{%- if call.id is not defined or call.id | length != 9 %}{{
    raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}{% endif -%}
{"name": {{ call.function.name | tojson }}, "arguments": {{ call.function.arguments | tojson }}, "id": {{
    call.id | tojson }}}
{%- endfor %}]<|im_end|>
{%- elif message['role'] == 'assistant' %} {{ message['content'] }}<|im_end|>
{%- elif message['role'] == 'tool' %}[TOOL_RESULTS] {"content": {{ message['content'] | tojson }}, "call_id": {{
    message.tool_call_id | tojson }}}[/TOOL_RESULTS]
{%- endif %}
{%- endfor %}"""
"""Mistral v0.3-like: ``[TOOL_CALLS] [{"name", "arguments"}, ...]``; results in ``[TOOL_RESULTS]``; call ids
of 9 characters or an error, as Mistral's own templates."""

HERMES_THINK = HERMES.replace(
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    "{%- if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}",
)
"""Qwen3-like: Hermes tool calls and a think section (``enable_thinking``)."""

UNKNOWN_TOOLS = _TURNS.replace("{%- for", "{% if tools %}{{ tools | tojson }}{% endif %}{%- for", 1) + (
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""A template that renders tools in no format we know: the documented format is used."""


DROPS_TOOL_HISTORY = (
    """{%- if tools %}<|im_start|>system
# Tools

<tools>
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}</tools>

For each function call, return a json object within <tool_call></tool_call> XML tags.<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message['role'] == 'tool' %}<|im_start|>user
{{ message['content'] }}<|im_end|>
"""
    + _CHATML_TAIL
)
"""SmolLM3-like: Hermes tools, but an assistant message's ``tool_calls`` are dropped (only its content is
written) and a tool result is written as a plain user turn."""

SYSTEM_TOOLS = """{%- for message in messages %}
{%- if message['role'] == 'system' and message['tools'] is defined and message['tools'] %}<|im_start|>system
{{ message['content'] }}<tools>{{ message['tools'] }}</tools><|im_end|>
{% else %}<|im_start|>{{ message['role'] }}
{{ message['content'] }}<|im_end|>
{% endif %}{% endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""
"""Phi-4-mini-like: tool definitions read from the system message's ``tools`` field (a JSON string); calls
and results not rendered as such (every other message is written as its role and content)."""

DEEPSEEK = """{{ messages[0]['content'] if messages[0]['role'] == 'system' else '' }}
{%- for message in messages %}
{%- if message['role'] == 'user' %}<|im_start|>user
{{ message['content'] }}<|im_end|>
{% elif message['role'] == 'assistant' %}<|im_start|>assistant
{{ message['content'] }}
{%- if message['tool_calls'] %}<｜tool▁calls▁begin｜>
{%- for tool in message['tool_calls'] %}{% if not loop.first %}{{ '\n' }}{% endif -%}
<｜tool▁call▁begin｜>{{ tool['type'] }}<｜tool▁sep｜>{{ tool['function']['name'] }}
```json
{{ tool['function']['arguments'] | tojson }}
```<｜tool▁call▁end｜>
{%- endfor %}<｜tool▁calls▁end｜>{% endif %}<|im_end|>
{% elif message['role'] == 'tool' %}<|im_start|>user
<｜tool▁output▁begin｜>{{ message['content'] }}<｜tool▁output▁end｜><|im_end|>
{% endif %}{% endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""
"""DeepSeek-R1-distill-like (its tool part): no tool definitions; calls as
``<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\\n```json\\n{...}\\n```<｜tool▁call▁end｜>...``."""


_GEMMA_TURNS = """{%- for message in loop_messages %}
{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
{{- raise_exception('Conversation roles must alternate') }}{% endif %}
{%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}
{{- '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '')
    + message['content'] | trim + '<end_of_turn>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"""

NO_SYSTEM = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% set loop_messages = messages %}{% set first_user_prefix = '' %}" + _GEMMA_TURNS
)
"""Gemma 2-like: refuses a system turn; user and model turns must alternate."""

FOLDS_SYSTEM = (
    "{% if messages[0]['role'] == 'system' %}{% set first_user_prefix = messages[0]['content'] + '\\n\\n' %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set first_user_prefix = '' %}"
    "{% set loop_messages = messages %}{% endif %}" + _GEMMA_TURNS
)
"""Gemma 3-like: the same turns, a system message folded into the first user turn by the template itself (its
text, a blank line, the user text), as google/gemma-3-*-it's template does."""

NEEDS_TOOLS = """<|im_start|>system
You may call these functions: {% for tool in tools %}{{ tool.function.name }} ({{
    tool.function.description }}) {% endfor %}<|im_end|>
{% for message in messages %}<|im_start|>{{ message['role'] }}
{{ message['content'] }}<|im_end|>
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""
"""Hermes-3's tool_use-like: iterates ``tools`` without a check, so it cannot render a conversation without
them (transformers passes ``tools=None``)."""

ACTIONS = (
    """{%- if tools %}<|im_start|>system
Tools: [{% for tool in tools %}{"name": {{ tool.function.name | tojson }}, "parameters": {{
    tool.function.parameters | tojson }}}{% endfor %}]<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message['role'] == 'assistant' and message.tool_calls %}<|im_start|>assistant
<|START_ACTION|>[{% for call in message.tool_calls %}{"tool_call_id": "{{ loop.index0 }}", "tool_name": {{
    call.function.name | tojson }}, "parameters": {{ call.function.arguments | tojson
    }}}{% endfor %}]<|END_ACTION|><|im_end|>
{% elif message['role'] == 'tool' %}<|im_start|>tool
{{ message['content'] }}<|im_end|>
"""
    + _CHATML_TAIL
)
"""Command-R7B-like: the tool list says ``"parameters"``, but calls are written as ``<|START_ACTION|>[...]``
with ``"tool_name"``: a format the package does not have."""


def with_template(tokenizer: Any, template: str | None) -> Any:
    """A copy of ``tokenizer`` with ``template`` as its chat template."""
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = template
    return tok
