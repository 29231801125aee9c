"""Numbers in a text by the paper's authors' rule (scoring.py's docstring): a match of
`\\d+(?:,\\d{3})*(?:\\.\\d*)?`, its commas and a trailing "." removed, a whole number written as an
integer. Read by the scoring and by the data's check that a numeric gold has a number."""

from __future__ import annotations

import re

NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d*)?")


def _normalize(match: str) -> str:
    whole, _, frac = match.replace(",", "").partition(".")
    frac = frac.rstrip("0")  # "3.50" is 3.5; "3.0" and "3." (a trailing period) are 3
    return f"{int(whole)}.{frac}" if frac else str(int(whole))  # int(): exact digits, where a float rounds


def numbers(text: str) -> list[str]:
    """Every number in `text` by the authors' rule, normalized: "1,234" -> "1234", "3.50" -> "3.5",
    "3.0" and "3." -> "3". Minus signs are not part of the pattern: "-5" gives "5", as in the paper."""
    return [_normalize(m) for m in NUMBER.findall(text)]
