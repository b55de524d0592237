"""python -m diskllm"""
import sys

from diskllm.cli.main import main

sys.exit(main())
