"""Models on disk: the installed index, GGUF headers, the pull registry, resolution."""
