"""python -m diskllm.core"""
import sys

from diskllm.core.cli import main

sys.exit(main())
