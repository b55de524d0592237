"""Spreading a model over llama.cpp's RPC workers (issue 17).

endpoints: HOST:PORT lists; probe: the ggml RPC handshake, to check a worker
before the server dies on it; split: which layers (weights and KV) each host
holds; workers: `diskllm worker` processes and their registry; failure: one
line naming the worker a dead server lost."""
