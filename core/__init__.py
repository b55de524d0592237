"""Core: build, run and control the patched llama-server. Never imports textual or diskllm.tui."""
