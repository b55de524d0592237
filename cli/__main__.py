"""python -m diskllm.cli"""
import sys

from diskllm.cli.main import main

sys.exit(main())
