"""The `diskllm` command line: parses arguments, calls diskllm.core, prints."""
