"""`python -m bench`: the whole benchmark suite (bench/suite.py)."""
import sys

from diskllm.bench.suite import main

sys.exit(main())
