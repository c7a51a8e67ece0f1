"""Tests for transforms.fhir.instant: strict FHIR instant parsing and exact ordering."""
import datetime as dt
import random

import pytest

from transforms.fhir.instant import (
    InvalidInstant,
    datetime_bounds,
    instant_key,
    is_instant,
    now_instant,
    text_key_of,
    utc_text_key,
)
from transforms.fhir.window import LastUpdatedWindow


@pytest.mark.parametrize("a, b", [
    ("2020-01-01T00:00:00.1+01:00", "2019-12-31T23:00:00.100Z"),
    ("2020-01-01T01:00:00+01:00", "2020-01-01T00:00:00Z"),
    ("2020-01-01T00:00:00Z", "2020-01-01T00:00:00.000000000Z"),
    ("2019-12-31T19:30:00-04:30", "2020-01-01T00:00:00.0Z"),
    ("2020-01-01T14:00:00+14:00", "2020-01-01T00:00:00Z"),
    ("2020-03-01T00:00:00-00:00", "2020-03-01T00:00:00+00:00"),
])
def test_same_instant_across_offsets_and_precisions_is_equal(a, b):
    assert instant_key(a) == instant_key(b)
    assert hash(instant_key(a)) == hash(instant_key(b))


def test_fractions_order_numerically_not_by_length():
    texts = [
        "2020-01-01T00:00:00.51Z",
        "2020-01-01T00:00:00Z",
        "2020-01-01T00:00:00.5Z",
        "2020-01-01T00:00:00.05Z",
        "2020-01-01T00:00:00.500Z",
    ]
    ordered = sorted(texts, key=instant_key)
    assert ordered[0] == "2020-01-01T00:00:00Z"
    assert ordered[1] == "2020-01-01T00:00:00.05Z"
    assert set(ordered[2:4]) == {"2020-01-01T00:00:00.5Z", "2020-01-01T00:00:00.500Z"}
    assert ordered[4] == "2020-01-01T00:00:00.51Z"
    assert instant_key("2020-01-01T00:00:00.05Z") < instant_key("2020-01-01T00:00:00.5Z")
    # A whole second beats any fraction of the previous second.
    assert instant_key("2020-01-01T00:00:00.999999Z") < instant_key("2020-01-01T00:00:01Z")


def test_more_than_six_fraction_digits_are_kept_exactly():
    base = instant_key("2020-01-01T00:00:00Z")
    tiny = instant_key("2020-01-01T00:00:00.0000001Z")
    assert tiny > base
    assert tiny < instant_key("2020-01-01T00:00:00.000001Z")
    assert instant_key("2020-01-01T00:00:00.1234567891Z") > instant_key("2020-01-01T00:00:00.123456789Z")
    assert instant_key("2020-01-01T00:00:00.0000001Z") == instant_key("2020-01-01T00:00:00.00000010Z")


def test_offset_moves_the_instant_the_right_way():
    # +01:00 is one hour ahead of UTC, so its wall clock is earlier in UTC.
    assert instant_key("2020-01-01T00:30:00+01:00") < instant_key("2020-01-01T00:00:00Z")
    assert instant_key("2020-01-01T00:30:00-01:00") > instant_key("2020-01-01T01:00:00Z")


def test_key_seconds_are_the_epoch_seconds():
    text = "2021-06-15T12:34:56.789+02:00"
    expected = dt.datetime.fromisoformat(text).timestamp()
    key = instant_key(text)
    assert key.seconds == int(expected)
    assert key.fraction == "789"


@pytest.mark.parametrize("text", [
    "2020-01-01T00:00:00",          # no zone
    "2020-01-01",                   # date only
    "2020-01-01T00:00Z",            # no seconds
    "2020-02-30T00:00:00Z",         # Feb 30
    "2019-02-29T00:00:00Z",         # not a leap year
    "2020-04-31T00:00:00Z",         # April has 30 days
    "2020-01-01T24:00:00Z",         # hour 24
    "2020-01-01T00:00:00+15:00",    # offset out of range
    "2020-01-01T00:00:00+14:30",    # beyond +14:00
    "2020-01-01T00:00:00+0100",     # offset without colon
    "2020-01-01T00:00:00.Z",        # empty fraction
    "2020-01-01 00:00:00Z",         # space separator
    "2020-01-01T00:00:00Z ",        # trailing space
    "0000-01-01T00:00:00Z",         # year zero
    "",
    None,
    20200101,
])
def test_invalid_values_raise(text):
    with pytest.raises(InvalidInstant):
        instant_key(text)
    assert not is_instant(text)


def test_leap_day_is_valid():
    assert instant_key("2020-02-29T00:00:00Z") < instant_key("2020-03-01T00:00:00Z")


def test_now_instant_is_a_valid_current_utc_instant():
    before = dt.datetime.now(dt.timezone.utc).timestamp()
    text = now_instant()
    after = dt.datetime.now(dt.timezone.utc).timestamp()
    assert is_instant(text)
    assert text.endswith("Z")
    assert len(text.split(".")[1]) == 4  # three digits of milliseconds, then Z
    assert int(before) <= instant_key(text).seconds <= after


def test_seconds_agree_with_datetime_over_random_instants():
    import datetime as dt
    import random

    rng = random.Random(7)
    for _ in range(5000):
        moment = dt.datetime(1, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(
            seconds=rng.randrange(0, 9998 * 365 * 86400)
        )
        minutes = rng.randrange(-14 * 60, 14 * 60 + 1)
        local = moment.astimezone(dt.timezone(dt.timedelta(minutes=minutes)))
        if not 1 <= local.year <= 9999:
            continue
        text = f"{local.year:04d}" + local.strftime("-%m-%dT%H:%M:%S") + (
            "Z" if minutes == 0 else local.strftime("%z")[:3] + ":" + local.strftime("%z")[3:]
        )
        expected = int((moment - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)).total_seconds())
        assert instant_key(text).seconds == expected, text


def test_datetime_bounds_span_their_precision():
    assert datetime_bounds("2020") == (instant_key("2020-01-01T00:00:00Z"), instant_key("2021-01-01T00:00:00Z"))
    assert datetime_bounds("2020-02") == (instant_key("2020-02-01T00:00:00Z"), instant_key("2020-03-01T00:00:00Z"))
    assert datetime_bounds("2020-02-28")[1] == instant_key("2020-02-29T00:00:00Z")
    full = instant_key("2020-02-03T01:02:03+01:00")
    assert datetime_bounds("2020-02-03T01:02:03+01:00") == (full, full)
    for bad in ("2020-13", "2020-02-30", "2020-02-03T01:02", "20", None):
        with pytest.raises(InvalidInstant):
            datetime_bounds(bad)


def _random_instant(rng) -> str:
    """A valid or nearly valid instant in any of the forms real data carries."""
    year = rng.choice([1969, 1970, 1999, 2000, 2019, 2020, 2024, 9999, 1])
    month, day = rng.randint(1, 12), rng.choice([1, 15, 28, 29, 30, 31])
    hour, minute, second = rng.choice([0, 12, 23]), rng.choice([0, 59]), rng.choice([0, 30, 59, 60])
    fraction = rng.choice(["", ".0", ".5", ".50", ".123", ".1230", ".000001", ".9999999"])
    zone = rng.choice(["Z", "Z", "Z", "+00:00", "+01:00", "-05:30", "+14:00"])
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}{fraction}{zone}"


def _instant_key_or_none(text):
    try:
        return instant_key(text)
    except InvalidInstant:
        return None


def test_text_keys_order_exactly_as_instant_keys():
    rng = random.Random(7)
    texts = [_random_instant(rng) for _ in range(3000)]
    for text in texts:
        fast = utc_text_key(text)
        if fast is not None:  # only valid `Z` forms below a leap second take the text path
            assert text.endswith("Z") and ":60" not in text
            assert text_key_of(instant_key(text)) == fast, text
        elif text.endswith("Z") and ":60" not in text:
            assert _instant_key_or_none(text) is None, text  # the text path refused only invalid dates
    keyed = [(t, utc_text_key(t), instant_key(t)) for t in texts if utc_text_key(t) is not None]
    for (a, fast_a, key_a), (b, fast_b, key_b) in zip(keyed, keyed[1:]):
        assert (fast_a < fast_b) == (key_a < key_b) and (fast_a == fast_b) == (key_a == key_b), (a, b)


def test_the_window_admits_the_same_by_either_path():
    rng = random.Random(11)
    valid = [t for t in (_random_instant(rng) for _ in range(4000)) if _instant_key_or_none(t) is not None]
    for _ in range(200):
        since, until, tx = sorted(rng.sample(valid, 3), key=instant_key)
        if not instant_key(since) < instant_key(until):
            continue
        window = LastUpdatedWindow(tx, since, until)
        for text in rng.sample(valid, 40):
            key = instant_key(text)
            expected = instant_key(since) < key < instant_key(until) and key <= instant_key(tx)
            assert window.admits({"meta": {"lastUpdated": text}}) == expected, (since, until, tx, text)
