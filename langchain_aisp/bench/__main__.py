"""``python -m langchain_aisp.bench``: same as the ``langchain-aisp-bench`` command."""

import sys

from langchain_aisp.bench.cli import main

sys.exit(main())
