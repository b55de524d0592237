"""python -m diskllm.tui"""
import sys

from diskllm.tui.app import run

sys.exit(run())
