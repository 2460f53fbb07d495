"""``python -m tune_prune.search``: run a pruning-schedule search (see ``--help``)."""

from tune_prune.search.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
