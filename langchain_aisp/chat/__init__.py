"""Private rooms of :class:`langchain_aisp.chat_models.AISPChatModel` (import the model from ``chat_models``).

Every function here takes data (the model's settings, the loaded ``lm``, the reward, the engine entry, the
messages), never the chat model object: nothing in ``chat/`` imports ``chat_models``.

- ``_loading``: the process-wide model cache and rewards as ``"module:qualname"`` paths (serialisation);
- ``_plan``: one call -> a ``Job`` (settings, rendered prompt, grammar, the auto-choice variant) and the plan
  of a ``batch`` call (each input's slot);
- ``_execute``: running jobs through the engine (retries, memory, deadlines, per-input outcomes, a batch
  group's one run) and merging the variants of a job (the auto choice);
- ``_progress``: the ``"aisp_progress"`` callback events and the run id of the current public call;
- ``_messages``: an engine result -> ``AIMessage`` / stream chunks (tool-call parsing, metadata);
- ``_structured``: ``with_structured_output`` parsers (cut replies, schema checks);
- ``_reasoning``: thinking models (the think tags, the reply split into reasoning and answer, the budget);
- ``_tool_formats``: the chat template's own tool-call format (Hermes/Qwen, Llama 3.1+, Mistral, DeepSeek, documented);
- ``_template``: what a chat template renders of tools (definitions and where, calls, results), read once per tokenizer;
- ``_reply``: one call's reply plan (thinking + tool format): its prefill and constraint, and how to read it;
- ``_format``: what a reply must look like (``OutputFormat``: free text, tool calls, one JSON object);
- ``_render``: LangChain messages -> the prompt (chat template or plain; tool and JSON instructions);
- ``_parse``: a reply -> its tool calls / JSON object, and the format validity term;
- ``_auto``: the ``tool_choice="auto"`` rule (a call or prose) and the order of the tools' forced-call rows;
- ``_grammar``: the llguidance adapter (JSON-schema, tool-call and prose grammars; the only llguidance import);
- ``_spans``: the conversation's texts and spans, and the candidates of each kind of field;
- ``_grounding``: how grounded a forced call's / structured output's values are in the conversation (the
  grounding term added to the reward) and the span-restricted grammars of the grounded samples.
"""
