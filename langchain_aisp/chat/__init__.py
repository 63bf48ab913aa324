"""Private modules of :class:`langchain_aisp.chat_models.AISPChatModel` (import the model from ``chat_models``).

- ``_reasoning``: thinking models (the think tags, the reply split into reasoning and answer, the budget);
- ``_tool_formats``: the chat template's own tool-call format (Hermes/Qwen, Llama 3.1+, Mistral, documented).
"""
