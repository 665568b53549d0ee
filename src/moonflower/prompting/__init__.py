"""Prompts as a model sees them, shared by the provider (which runs them) and the coordinator
(which counts them).

A chat is rendered to `Prompt` segments — the template's own markup apart from the callers'
text (`chat_format`, `content_slots`, `tool_prompt`) — and `tokenizer` turns those segments
into token ids over a model's vocabulary, parsing control tokens only in the markup. Nothing
here imports llama.cpp at import time, loads weights, or logs prompt text.
"""
