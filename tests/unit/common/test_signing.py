import pytest

from stepmail_common.errors import InvalidTokenError
from stepmail_common.signing import Signer, parse_keys
from stepmail_common.tracking import ClickToken, MailRef, UnsubscribeToken

KEYS = "k2:new-secret-0123456789abcdef,k1:old-secret-0123456789abcdef"
REF = MailRef("m-1", "c-1", "welcome", 1, "welcome", 0)


def test_token_round_trips_and_first_key_signs():
    signer = Signer.from_spec(KEYS)
    token = signer.sign({"a": 1, "名前": "値"})
    assert token.startswith("k2.")
    assert signer.verify(token) == {"a": 1, "名前": "値"}


def test_retired_key_still_verifies_during_rotation():
    old = Signer.from_spec("k1:old-secret-0123456789abcdef")
    assert Signer.from_spec(KEYS).verify(old.sign({"x": 1})) == {"x": 1}


@pytest.mark.parametrize(
    "tamper",
    [
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),
        lambda t: "k9" + t[2:],
        lambda t: t.split(".")[0] + ".e30." + t.split(".")[2],
        lambda t: t.replace(".", "", 1),
        lambda t: "",
    ],
)
def test_tampered_tokens_are_refused(tamper):
    signer = Signer.from_spec(KEYS)
    with pytest.raises(InvalidTokenError):
        signer.verify(tamper(signer.sign({"u": "https://example.com/"})))


@pytest.mark.parametrize("spec", ["", "nokey", "k1:short", "k.1:0123456789abcdefg"])
def test_bad_key_specs_are_refused(spec):
    with pytest.raises(ValueError, match=r"SIGNING_KEYS|shorter"):
        parse_keys(spec)


def test_click_token_carries_mail_link_and_url():
    signer = Signer.from_spec(KEYS)
    token = ClickToken(REF, 3, "https://shop.example.com/a?b=c&d=é").encode(signer)
    decoded = ClickToken.decode(signer, token)
    assert decoded == ClickToken(REF, 3, "https://shop.example.com/a?b=c&d=é")


def test_click_token_refuses_other_kinds_and_schemes():
    signer = Signer.from_spec(KEYS)
    with pytest.raises(InvalidTokenError):
        ClickToken.decode(signer, UnsubscribeToken(REF, "marketing").encode(signer))
    with pytest.raises(InvalidTokenError):
        ClickToken.decode(signer, ClickToken(REF, 0, "javascript:alert(1)").encode(signer))


def test_unsubscribe_token_round_trips():
    signer = Signer.from_spec(KEYS)
    token = UnsubscribeToken(REF, "marketing").encode(signer)
    assert UnsubscribeToken.decode(signer, token) == UnsubscribeToken(REF, "marketing")
