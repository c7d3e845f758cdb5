"""Profiles, policies and traces are read with bounds: a small hostile file is refused at once, and no
error message prints more than an excerpt of a value."""

import time

import pytest

from edgevit.errors import EdgevitError
from edgevit.files import MAX_BYTES, excerpt

# nine levels of nine references: 9**9 = 387 M strings, in 700 bytes
BOMB = "\n".join(["a0: &a0 [\"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\"]"] + [
    f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)])


def _timed(fn):
    t0 = time.perf_counter()
    with pytest.raises(EdgevitError) as e:
        fn()
    return str(e.value), time.perf_counter() - t0


def test_an_alias_bomb_inside_a_valid_profile_key_is_refused_before_it_is_built(tmp_path):
    from edgevit.build.profiles import load_profile

    p = tmp_path / "bomb.yaml"
    p.write_text(BOMB + "\nname: bomb\ndevice: {kind: cpu}\nbackend: onnxruntime\ndescription: *a8\n")
    msg, seconds = _timed(lambda: load_profile(str(p)))
    assert "aliases expand to" in msg and "bomb.yaml" in msg and seconds < 5 and len(msg) < 400


def test_an_alias_bomb_in_a_policy_is_refused_before_it_is_built(tmp_path):
    from edgevit.runtime.simulate import load_policy

    p = tmp_path / "policy.yaml"
    p.write_text(BOMB + "\npolicy: battery\nthresholds: *a8\n")
    msg, seconds = _timed(lambda: load_policy(str(p), {}))
    assert "policy file" in msg and "aliases expand to" in msg and seconds < 5 and len(msg) < 400


def test_a_few_anchors_are_still_fine(tmp_path):
    from edgevit.runtime.simulate import load_policy

    p = tmp_path / "policy.yaml"
    p.write_text("policy: composite\nmembers:\n  - {policy: battery, thresholds: &l [80, 50, 20]}\n"
                 "  - {policy: battery, thresholds: *l, hysteresis_pct: 2}\n")
    assert load_policy(str(p), {})[0] is not None


def test_a_bad_value_is_named_by_an_excerpt_not_printed_whole(tmp_path):
    from edgevit.runtime.simulate import load_policy

    p = tmp_path / "policy.yaml"
    p.write_text("policy: battery\nthresholds: [" + ", ".join(["[1, 2, 3, 4, 5, 6, 7, 8]"] * 2000) + "]\n")
    msg, _ = _timed(lambda: load_policy(str(p), {}))
    assert "thresholds" in msg and len(msg) < 400
    assert len(excerpt("x" * 10_000)) <= 80 and len(excerpt([[list(range(100))] * 100] * 100)) <= 80


@pytest.mark.parametrize("what, name", [("profile", "p.yaml"), ("policy file", "p.yaml"), ("trace", "t.csv")])
def test_a_file_larger_than_its_kind_may_be_is_refused_unread(tmp_path, what, name):
    from edgevit.files import read_text

    p = tmp_path / name
    with open(p, "wb") as f:
        f.truncate(MAX_BYTES[what] + 1)          # sparse: nothing is written, nothing should be read
    with pytest.raises(EdgevitError, match=rf"{what} .*{name}: {MAX_BYTES[what] + 1:,} bytes, more than"):
        read_text(p, what)
