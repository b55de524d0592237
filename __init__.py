"""DiskLLM: llama.cpp with the KV cache on SSD, and a terminal workbench."""
