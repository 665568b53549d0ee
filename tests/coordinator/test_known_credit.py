"""The credit hint that lets a request go to a provider while its hold is written: it
never covers more than the last hold left less every hold still in flight, whatever order
holds written side by side report in, and a refusal forgets it."""

from __future__ import annotations

from moonflower.coordinator.billing import KnownCredit


def test_nothing_is_covered_before_a_hold_has_been_written() -> None:
    credit = KnownCredit()
    assert not credit.covers("a", 1)


def test_holds_in_flight_count_against_the_hint() -> None:
    credit = KnownCredit()
    assert not credit.covers("a", 100)  # the first hold is written before its job goes
    credit.written("a", 300, 100, since=0)
    assert credit.covers("a", 100)
    assert credit.covers("a", 100)
    assert credit.covers("a", 100)
    assert not credit.covers("a", 100)  # 300 left, 300 in flight (this one counts too)
    assert not credit.covers("b", 1)  # accounts are apart


def test_the_lowest_report_stands_while_others_are_in_flight() -> None:
    credit = KnownCredit()
    credit.written("a", 1000, 0, since=0)
    since = credit.reports("a")
    assert credit.covers("a", 100)
    assert credit.covers("a", 100)
    credit.written("a", 800, 100, since)  # the later hold reports first...
    credit.written("a", 900, 100, since)  # ...and the earlier one's older view does not win
    assert credit.covers("a", 800)
    assert not credit.covers("a", 1)


def test_a_report_with_nothing_beside_it_replaces_the_hint() -> None:
    credit = KnownCredit()
    credit.written("a", 100, 0, since=0)
    credit.written("a", 5000, 0, since=credit.reports("a"))  # a deposit since: it shows
    assert credit.covers("a", 4000)


def test_a_refusal_forgets_the_hint() -> None:
    credit = KnownCredit()
    credit.written("a", 500, 0, since=0)
    assert credit.covers("a", 200)
    credit.refused("a", 200)
    assert not credit.covers("a", 1)


def test_what_it_remembers_is_bounded() -> None:
    credit = KnownCredit()
    for n in range(KnownCredit.MAX_ACCOUNTS + 5):
        credit.refused(f"refused-{n}", 0)
        credit.written(f"paid-{n}", 100, 0, since=0)
        assert len(credit._reports) <= KnownCredit.MAX_ACCOUNTS
        assert len(credit._left) <= KnownCredit.MAX_ACCOUNTS
