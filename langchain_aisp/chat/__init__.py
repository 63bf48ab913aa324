"""Private modules of :class:`langchain_aisp.chat_models.AISPChatModel` (import the model from ``chat_models``).

- ``_grounding``: how grounded a call's / structured output's values are in the conversation (the grounding
  term added to the reward), and the span-restricted grammar of the grounded samples.
"""
