"""Rules a built engine entry obeys on every host, whichever precision or backend won there.

Which candidate ships depends on the host (INT8 on an AVX2 CPU, bf16 can win on an AVX512-BF16 one, a
kernel's rounding can move a candidate across the gate), so tests assert these rules, never an outcome.
"""


def check_fallback(e: dict, preferred: str) -> None:
    """An engine off the profile's first preference says what it left and why; one on it records no fallback."""
    if e["precision"] == preferred:
        assert e["fallback"] is None, e["fallback"]
    else:
        fb = e["fallback"]
        assert fb["from"] == preferred and fb["to"] == e["precision"] and fb["reason"], fb


def check_unmeasured_choice(e: dict, preferred: str) -> None:
    """Where latency was not measured, the first candidate in the profile's preference order that passed the
    gate ships, and every candidate before it was skipped or failed the gate."""
    assert e["gate"]["passed"], e["gate"]
    chosen = next(i for i, c in enumerate(e["candidates"]) if c["id"] == e["chosen"]["id"])
    assert e["candidates"][chosen]["passed"]
    assert all(c.get("skipped") or not c["passed"] for c in e["candidates"][:chosen]), e["candidates"][:chosen]
    check_fallback(e, preferred)
