"""The Textual workbench over diskllm.core."""
