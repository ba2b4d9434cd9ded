"""DKIM signatures made with ``cryptography`` verify with dkimpy's verifier, offline."""

import base64
import re
import time

import dkim  # type: ignore[import-untyped]
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from stepmail_sender.dkimsign import DkimSigner, DomainKey, load_keys, relaxed_body

MESSAGE = (
    b"From: =?utf-8?b?44K544OG44OD44OX?= <news@shop.example.jp>\r\n"
    b"To: taro@example.org\r\n"
    b"Subject: =?utf-8?b?44GU5rOo5paH44GC44KK44GM44Go44GG?=\r\n"
    b"Date: Tue, 01 Apr 2025 09:00:00 +0900\r\n"
    b"Message-ID: <m-1@shop.example.jp>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain;\r\n charset=utf-8\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"List-Unsubscribe: <https://t.example.jp/u/abc>, <mailto:u@example.jp>\r\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    b"\r\n"
    b"44GU5rOo5paH44GC44KK44GM44Go44GG44GU44GW44GE44G+44GZ\r\n\r\n\r\n"
)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def dns(records: dict[bytes, bytes]):
    def lookup(name: bytes, timeout: int = 5) -> bytes:
        return records.get(name, b"")

    return lookup


def rsa_record(key: rsa.RSAPrivateKey) -> bytes:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


def ed_record(key: ed25519.Ed25519PrivateKey) -> bytes:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return b"v=DKIM1; k=ed25519; p=" + base64.b64encode(raw)


def test_rsa_signature_verifies_and_covers_one_click(rsa_key):
    signer = DkimSigner([DomainKey("shop.example.jp", "s1", rsa_key)])
    signed = signer(MESSAGE)
    lookup = dns({b"s1._domainkey.shop.example.jp.": rsa_record(rsa_key)})
    assert dkim.verify(signed, dnsfunc=lookup)
    header = signed.split(b"\r\n\r\n")[0].decode()
    assert "list-unsubscribe-post" in header
    assert "c=relaxed/relaxed" in header
    tampered = signed.replace(b"List-Unsubscribe=One-Click", b"List-Unsubscribe=Two-Click")
    assert not dkim.verify(tampered, dnsfunc=lookup)
    assert not dkim.verify(signed.replace(b"44GU5rOo", b"44GU5rOp"), dnsfunc=lookup)


def test_ed25519_second_signature_verifies_too(rsa_key, ed_key):
    signer = DkimSigner(
        [DomainKey("shop.example.jp", "ed", ed_key), DomainKey("shop.example.jp", "s1", rsa_key)]
    )
    signed = signer(MESSAGE)
    assert signed.count(b"DKIM-Signature:") == 2
    lookup = dns(
        {
            b"s1._domainkey.shop.example.jp.": rsa_record(rsa_key),
            b"ed._domainkey.shop.example.jp.": ed_record(ed_key),
        }
    )
    verifier = dkim.DKIM(signed)
    # The RSA signature is the lower one; dkimpy needs PyNaCl (not installed) for Ed25519.
    assert verifier.verify(idx=1, dnsfunc=lookup)
    top = signed.split(b"\r\n")[0]
    assert b"a=ed25519-sha256" in top
    assert b"s=ed" in top


def test_other_domains_pass_unsigned(rsa_key):
    signer = DkimSigner([DomainKey("other.example", "s1", rsa_key)])
    assert signer(MESSAGE) == MESSAGE


def test_relaxed_body_rules():
    assert relaxed_body(b"a  \t b \r\n\r\n\r\n") == b"a b\r\n"
    assert relaxed_body(b"\r\n\r\n") == b""
    assert relaxed_body(b"x") == b"x\r\n"


@pytest.mark.parametrize(
    "body",
    [
        b"QUJD\r\nREVG\r\n\r\n",
        b"a b\r\nc\r\n",
        b"a\tb\r\n",
        b"a  b\r\n",
        b"a \r\nb\t\r\n \r\n",
        b"x \t\r\n\r\n",
        b"no line end",
    ],
)
def test_relaxed_body_matches_the_plain_rewrite(body):
    """The shortcuts give what the two substitutions of RFC 6376 3.4.4 give."""
    plain = body if body.endswith(b"\r\n") else body + b"\r\n"
    plain = re.sub(rb"[ \t]+\r\n", b"\r\n", re.sub(rb"[ \t]+", b" ", plain)).rstrip(b"\r\n")
    assert relaxed_body(body) == (plain + b"\r\n" if plain else b"")


def test_keys_load_from_pem_files(tmp_path, rsa_key):
    pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tmp_path / "k.pem").write_bytes(pem)
    (keys,) = load_keys(f"Shop.Example.JP:s1:{tmp_path / 'k.pem'}")
    assert (keys.domain, keys.selector, keys.algorithm) == ("shop.example.jp", "s1", "rsa-sha256")


def test_signing_rate_is_reported(rsa_key, capsys):
    """Not an assertion on speed (that is the benchmark's job): the rate is printed."""
    signer = DkimSigner([DomainKey("shop.example.jp", "s1", rsa_key)])
    started = time.perf_counter()
    for _ in range(200):
        signer(MESSAGE)
    rate = 200 / (time.perf_counter() - started)
    print(f"DKIM RSA-2048 signing: {rate:.0f} mails/s")
    assert rate > 0
