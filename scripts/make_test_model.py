"""`python scripts/make_test_model.py`: the generator lives in nudge_local.synthetic."""

from nudge_local.synthetic import main

if __name__ == "__main__":
    main()
