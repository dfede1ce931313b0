"""The chat server: customer WebSocket, widget and demo page, health and metrics."""
