"""The chaos run's accounting: every expected mail delivered once, ambiguous, or a failure."""

from bench.accounting import LedgerRow, account


def rows(*items: tuple[str, str, str]) -> list[LedgerRow]:
    return [LedgerRow(message_id, contact_id, state) for message_id, contact_id, state in items]


def test_each_mail_delivered_once_is_ok():
    result = account(
        ["c1", "c2"],
        [("c1", "m1"), ("c2", "m2")],
        rows(("m1", "c1", "sent"), ("m2", "c2", "sent")),
    )
    assert (result.expected, result.delivered, result.lost, result.duplicated) == (2, 2, 0, 0)
    assert result.accounted == 2
    assert result.ok


def test_a_mail_the_sink_never_got_is_lost_and_says_where():
    result = account(
        ["c1", "c2", "c3"],
        [("c1", "m1")],
        rows(("m1", "c1", "sent"), ("m2", "c2", "sent")),
    )
    assert result.lost == 2
    assert dict(result.lost_where) == {"ledger sent": 1, "no ledger row": 1}
    assert result.examples["lost"] == ["c2", "c3"]
    assert not result.ok


def test_two_copies_outside_the_ambiguous_set_are_a_duplicate():
    result = account(["c1"], [("c1", "m1"), ("c1", "m1")], rows(("m1", "c1", "sent")))
    assert (result.delivered, result.duplicated) == (0, 1)
    assert not result.ok


def test_two_different_mails_for_one_trigger_are_a_duplicate_too():
    result = account(["c1"], [("c1", "m1"), ("c1", "m9")], rows(("m1", "c1", "sent")))
    assert result.duplicated == 1
    assert not result.ok


def test_ambiguous_mails_are_accounted_for_whether_they_arrived_or_not():
    result = account(
        ["c1", "c2", "c3"],
        [("c1", "m1"), ("c3", "m3"), ("c3", "m3")],
        rows(("m1", "c1", "ambiguous"), ("m2", "c2", "ambiguous"), ("m3", "c3", "ambiguous")),
    )
    assert (result.ambiguous, result.ambiguous_delivered, result.ambiguous_duplicated) == (3, 1, 1)
    assert (result.lost, result.duplicated) == (0, 0)
    assert result.ok


def test_a_recorded_failure_is_not_lost_but_is_not_delivered():
    result = account(["c1"], [], rows(("m1", "c1", "failed")))
    assert (result.failed, result.lost, result.accounted) == (1, 0, 1)


def test_a_mail_nobody_expected_fails_the_run():
    result = account(["c1"], [("c1", "m1"), ("c7", "m7")], rows(("m1", "c1", "sent")))
    assert result.unexpected == 1
    assert not result.ok


def test_the_report_is_plain_json():
    report = account(["c1"], [], []).as_dict()
    assert report["lost"] == 1
    assert report["lost_where"] == {"no ledger row": 1}
    assert report["ok"] is False
