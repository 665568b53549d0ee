"""Moonflower: a private, decentralized LLM inference network."""

__version__ = "0.1.0"
