"""`nudge-local bench`: every decoding mode side by side on the same pair, in one process, with
paired ratios. measure.py runs and tabulates the modes, generated.py writes the generated pairs
(with synthetic.py, which tests and scripts use for their models too), cli.py reads the options."""
