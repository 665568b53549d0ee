"""HTTP and WebSocket routes of the coordinator, grouped by who calls them."""
