"""`python scripts/bench.py`, the same as `nudge-local bench`: the benchmark lives in nudge_local.bench."""

from nudge_local.bench.cli import main

if __name__ == "__main__":
    main()
