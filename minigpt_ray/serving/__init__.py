"""Serving as a Ray Serve app: batched KV-cache decoding and the OpenAI API (no Ray) wired to Serve (app.py)."""
