"""``python -m langchain_aisp.serve serve ...``: the same as the ``langchain-aisp`` command."""

from langchain_aisp.serve.cli import main

raise SystemExit(main())
