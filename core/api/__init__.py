"""`diskllm serve`: the Ollama HTTP API (and OpenAI routes) on SSD-KV llama-servers.

settings (address, key, keep_alive), manager (one llama-server per model, loaded
through core.launch), translate (Ollama <-> llama-server), pulling (NDJSON pull
progress), app (the Starlette routes)."""
