"""``python -m tune_prune.export EXPERIMENT_DIR OUT_DIR``: export a finished search's best trial."""

from __future__ import annotations

import argparse
import sys

from tune_prune.errors import TunePruneError


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, export, and say where the result is."""
    parser = argparse.ArgumentParser(
        prog="python -m tune_prune.export",
        description="Export the best trial of a finished tune_prune search.",
    )
    parser.add_argument("experiment", help="experiment folder written by python -m tune_prune.search")
    parser.add_argument("out_dir", help="folder to write the exported model to")
    args = parser.parse_args(argv)
    from tune_prune.search.export_best import export_best

    try:
        out = export_best(args.experiment, args.out_dir)
    except TunePruneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported to {out}; reload with tune_prune.export.load({str(out)!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
