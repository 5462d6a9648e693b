"""The `airlock` command line (placeholder until the flow lands)."""
import sys


def main(argv=None) -> int:
    print("airlock: not built yet", file=sys.stderr)
    return 2
