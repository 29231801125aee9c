"""`python scripts/make_test_model.py`: the generator lives in nudge_local.bench.synthetic."""

from nudge_local.bench.synthetic import main

if __name__ == "__main__":
    main()
