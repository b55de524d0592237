"""python -m diskllm"""
import sys

from diskllm.core.cli import main

sys.exit(main())
