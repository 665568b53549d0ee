"""Tests for the engines' engine-neutral parts: turning sampled tokens into output events."""
