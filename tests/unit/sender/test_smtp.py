"""SMTP URL parsing, reply classification and redaction."""

import pytest

from stepmail_sender.smtp import (
    InvalidSmtpUrlError,
    Verdict,
    classify,
    parse_smtp_url,
    redact,
    reply_of,
)


def test_plain_url_with_port():
    target = parse_smtp_url("smtp://127.0.0.1:1025")
    assert (target.host, target.port) == ("127.0.0.1", 1025)
    assert not target.implicit_tls
    assert not target.starttls
    assert target.username is None
    assert target.password is None


def test_smtps_is_implicit_tls_on_465_by_default():
    target = parse_smtp_url("smtps://mail.example.com")
    assert target.implicit_tls
    assert target.port == 465


def test_starttls_option_defaults_to_submission_port():
    target = parse_smtp_url("smtp://mail.example.com?starttls=true")
    assert target.starttls
    assert target.port == 587
    assert parse_smtp_url("smtp://mail.example.com").port == 25


def test_credentials_are_url_decoded_and_hidden_from_repr():
    target = parse_smtp_url("smtp://us%40er:p%3Ass%2Fword@mail.example.com:2525")
    assert target.username == "us@er"
    assert target.password == "p:ss/word"
    assert "p:ss" not in repr(target)
    assert "auth=True" in repr(target)


def test_verify_can_be_turned_off():
    assert not parse_smtp_url("smtps://h?verify=false").verify_tls
    assert parse_smtp_url("smtps://h").verify_tls


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:1025",
        "smtp://",
        "smtp://host:notaport",
        "smtps://host?starttls=true",
        "smtp://host?tls=yes",
    ],
)
def test_invalid_urls_are_refused(url):
    with pytest.raises(InvalidSmtpUrlError):
        parse_smtp_url(url)


@pytest.mark.parametrize(
    ("code", "verdict"),
    [
        (250, Verdict.ACCEPTED),
        (251, Verdict.ACCEPTED),
        (421, Verdict.TRANSIENT),
        (451, Verdict.TRANSIENT),
        (452, Verdict.TRANSIENT),
        (550, Verdict.PERMANENT),
        (554, Verdict.PERMANENT),
    ],
)
def test_classify_reply_codes(code, verdict):
    assert classify(code) is verdict


def test_only_transient_and_connection_failures_are_retried():
    assert Verdict.TRANSIENT.retriable
    assert Verdict.CONNECTION.retriable
    assert not Verdict.ACCEPTED.retriable
    assert not Verdict.PERMANENT.retriable
    # Retrying after a broken DATA could deliver the mail twice: that is the policy's call.
    assert not Verdict.UNKNOWN.retriable


def test_replies_lose_addresses_and_are_bounded():
    reply = reply_of(550, "5.1.1 <taro.yamada@example.co.jp>: Recipient address rejected")
    assert reply.code == 550
    assert "example.co.jp" not in reply.text
    assert "taro" not in reply.text
    assert "Recipient address rejected" in reply.text
    assert len(redact("x" * 5000)) == 1000
