"""The provider: the process that serves models to the network.

It connects out to a coordinator, proves what it is, runs each job it is sent on a local
engine and streams the answer back sealed. Engines, model discovery and hardware detection
live here; nothing in this package knows OpenAI or Anthropic request shapes.
"""
