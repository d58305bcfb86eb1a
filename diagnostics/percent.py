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
    step = 10.0**-shown_places
    if shown >= 100 and probability < 1:
        text = f">{100 - step:.{shown_places}f}"
    elif shown <= 0 < probability:
        text = f"<{step:.{shown_places}f}"
    else:
        text = f"{shown:.{shown_places}f}"
    return text, f"{limit:.{shown_places}f}"
