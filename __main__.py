"""python -m diskllm"""
import sys

from diskllm.launcher import main

sys.exit(main())
