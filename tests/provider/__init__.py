"""Tests for the provider: engines, model discovery and hardware detection."""
