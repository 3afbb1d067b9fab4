"""``python -m augkd_edge.cli``: the same as the ``augkd-edge`` console script."""

from augkd_edge.cli import main

main()
