"""Reward replies whose length is close to a target."""

from __future__ import annotations

from .base import Example, Param, as_text, template


def band_score(value: float, target: float, tolerance: float) -> float:
    """1 inside target ± tolerance, falling linearly to 0 at target ± 2 × tolerance.

    The slope gives partial credit (a gradient to follow) near the band. With
    tolerance 0 only the exact target scores.
    """
    distance = abs(value - target)
    if distance <= tolerance:
        return 1.0
    if tolerance <= 0:
        return 0.0
    return max(0.0, 1.0 - (distance - tolerance) / tolerance)


@template(
    name="length_target",
    title="Length near a target",
    description="Gives full reward when the reply is about the target length, and less the further it is from it.",
    category="style",
    params=[
        Param("unit", "choice", "words", "Measure length in words or in characters.", choices=["words", "characters"]),
        Param("target", "int", 50, "The ideal length.", min=0, max=100_000),
        Param(
            "tolerance",
            "int",
            20,
            "Lengths within target ± tolerance get full reward; it then fades to 0 at target ± 2 × tolerance.",
            min=0,
            max=100_000,
        ),
    ],
    examples=[
        Example(" ".join(["word"] * 50), None, 1.0),
        Example(" ".join(["word"] * 70), None, 1.0),
        Example(" ".join(["word"] * 80), None, 0.5),
        Example(" ".join(["word"] * 90), None, 0.0),
        Example("Hello!", None, 1.0, params={"unit": "characters", "target": 5, "tolerance": 2}),
        Example("", None, 0.0),
    ],
)
def length_target(prompts, completions, answers, *, unit="words", target=50, tolerance=20):
    # Length is measured on the full text (no clipping); split/len are linear.
    if unit == "words":
        lengths = [len(as_text(c).split()) for c in completions]
    else:
        lengths = [len(as_text(c)) for c in completions]
    return [band_score(n, target, tolerance) for n in lengths]
