from __future__ import annotations

from django import template

from diagnostics.percent import probability_and_threshold

register = template.Library()


@register.filter
def percents_of(probability: float, threshold: float) -> tuple[str, str]:
    """The worklist's whole-percent probability, on its label's side of `threshold`, and
    the threshold to as many places."""
    return probability_and_threshold(probability, threshold, places=0)
