"""The coordinator: HTTP dialects for consumers, a WebSocket for providers, dispatch between."""
