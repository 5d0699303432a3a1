"""Serving: `encore serve`, an OpenAI-compatible HTTP server with continuous batching over
`encore.Engine` (needs the `encore[serve]` extra: FastAPI, uvicorn, prometheus-client)."""

from encore.serve.server import ServerConfig, build_app, serve, slots_for

__all__ = ["ServerConfig", "build_app", "serve", "slots_for"]
