"""Probabilities as percentages for people to read, on the side of the threshold the
model's label is on.

Rounded alone, a probability just below the threshold can read as the threshold itself:
with the shipped threshold 0.9200189, a study scored 0.91996 (normal) read "92.0%, below
the model's decision threshold of 92.0%", and 0.9151 read "Normal 92%" on the worklist.
"""

from __future__ import annotations

# Decimals added, at most, to tell a probability from the threshold it is just under.
EXTRA_PLACES = 2


def probability_and_threshold(probability: float, threshold: float, places: int = 1) -> tuple[str, str]:
    """(probability, threshold) in percent with `places` decimals, or more where that
    would put the probability on the threshold; "<92.00" if even those do not tell
    them apart. Never "100" for a probability below 1, nor "0" above 0."""
    below = probability < threshold
    for shown_places in range(places, places + EXTRA_PLACES + 1):
        shown, limit = round(probability * 100, shown_places), round(threshold * 100, shown_places)
        if not below or shown < limit:
            break
    else:
        return f"<{limit:.{shown_places}f}", f"{limit:.{shown_places}f}"
    return _bounded(probability, shown, shown_places), _bounded(threshold, limit, shown_places)


def _bounded(value: float, shown: float, places: int) -> str:
    """`shown` (value in percent, rounded) as text, never "100" for a value below 1 nor "0"
    above 0: a threshold of 0.996 read "threshold 100%" (diff review)."""
    step = 10.0**-places
    if shown >= 100 and value < 1:
        return f">{100 - step:.{places}f}"
    if shown <= 0 < value:
        return f"<{step:.{places}f}"
    return f"{shown:.{places}f}"
