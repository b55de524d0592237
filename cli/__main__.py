"""python -m diskllm.core"""
import sys

from diskllm.cli.main import main

sys.exit(main())
