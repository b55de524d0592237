"""Checks of parsed command-line values shared by the verbs."""
from __future__ import annotations

import argparse

from diskllm.core.errors import DiskLLMError


def require_positive(args: argparse.Namespace, *flags: str) -> None:
    """A one-line error for the first of these integer options given as 0 or less."""
    for flag in flags:
        v = getattr(args, flag)
        if v is not None and v <= 0:
            raise DiskLLMError(f"--{flag.replace('_', '-')} must be a positive integer")
