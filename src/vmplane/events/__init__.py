"""Typed events: persisted log → in-process bus → SSE, WebSocket and webhooks."""
