"""Opens, machine flags, the preference centre and ESP webhooks, over HTTP with the real
broker and Postgres."""

import asyncio
import base64
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg
import httpx
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from prometheus_client import REGISTRY

from stepmail_common import event_types
from stepmail_common.events import CloudEvent
from stepmail_common.kafka import EventProducer
from stepmail_common.signing import Signer
from stepmail_common.topics import Topics
from stepmail_common.tracking import ClickToken, MailRef, OpenToken, UnsubscribeToken
from stepmail_tracker.app import PIXEL_GIF, create_app
from stepmail_tracker.feedback import sns_string_to_sign
from stepmail_tracker.settings import TrackerSettings
from tests.integration.kafka_reader import parse_event, read_records

pytestmark = pytest.mark.integration

KEYS = "k2:integration-secret-0123456789,k1:older-secret-abcdefghijkl"
SIGNER = Signer.from_spec(KEYS)
OLD_SIGNER = Signer.from_spec("k1:older-secret-abcdefghijkl")
BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"
CERT_URL = "https://sns.ap-northeast-1.amazonaws.com/SimpleNotificationService-test.pem"
TOPIC_ARN = "arn:aws:sns:ap-northeast-1:123456789012:ses-feedback"


def _rsa_cert() -> tuple[rsa.RSAPrivateKey, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM)


SNS_KEY, SNS_CERT = _rsa_cert()
SG_KEY = ec.generate_private_key(ec.SECP256R1())
SG_PUBLIC = base64.b64encode(
    SG_KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
).decode()


@dataclass
class Tracker:
    client: httpx.AsyncClient
    topics: Topics
    bootstrap: str
    database_url: str
    fetched: list[str] = field(default_factory=list)


def _ref(contact_id: str) -> MailRef:
    return MailRef(str(uuid.uuid4()), contact_id, "welcome", 1, "welcome", 0)


@pytest.fixture
async def tracker(kafka_bootstrap: str, database_url: str) -> AsyncIterator[Tracker]:
    prefix = f"t{uuid.uuid4().hex[:10]}."
    settings = TrackerSettings(
        kafka_bootstrap_servers=kafka_bootstrap,
        kafka_topic_prefix=prefix,
        kafka_topic_partitions=1,
        signing_keys=KEYS,
        database_url=database_url,
        tracker_client_ip_header="x-forwarded-for",
        tracker_proxy_cidrs="17.0.0.0/8,2001:db8::/32",
        tracker_sns_auto_confirm=True,
        tracker_sns_topic_arns=TOPIC_ARN,
        tracker_sendgrid_public_key=SG_PUBLIC,
        tracker_rate_refresh_seconds=0.1,
    )
    fetched: list[str] = []

    async def fetch(url: str) -> bytes:
        fetched.append(url)
        return SNS_CERT if url == CERT_URL else b"<ConfirmSubscriptionResponse/>"

    app = create_app(settings, fetch_url=fetch)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://tracker.test"
        ) as client,
    ):
        yield Tracker(client, Topics(prefix), kafka_bootstrap, database_url, fetched)


async def _events(tracker: Tracker, count: int) -> list[CloudEvent]:
    records = await read_records(tracker.bootstrap, tracker.topics.engagement_events, count)
    return [parse_event(r) for r in records]


async def _marker(tracker: Tracker) -> None:
    """A human click: a topic's last event, to prove nothing else came before it."""
    token = ClickToken(_ref("c-marker"), 0, "https://shop.example.com/").encode(SIGNER)
    headers = {"User-Agent": BROWSER}
    assert (await tracker.client.get(f"/c/{token}", headers=headers)).status_code == 302


async def test_open_pixel_is_an_uncached_gif_and_publishes_a_human_open(tracker: Tracker):
    ref = _ref("c-open")
    response = await tracker.client.get(
        f"/o/{OpenToken(ref).encode(SIGNER)}", headers={"User-Agent": BROWSER}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/gif"
    assert response.content == PIXEL_GIF
    assert response.content.startswith(b"GIF89a\x01\x00\x01\x00")
    assert response.headers["cache-control"] == "no-store, no-cache, must-revalidate, private"
    (event,) = await _events(tracker, 1)
    assert event.type == event_types.ENGAGEMENT_OPENED
    assert event.subject == "c-open"
    assert event.data["message_id"] == ref.message_id
    assert event.data["step"] == {"id": "welcome", "index": 0}
    assert event.data["machine"] is False
    assert "machine_reason" not in event.data


async def test_a_bad_open_token_still_gets_the_gif_and_publishes_nothing(tracker: Tracker):
    before = REGISTRY.get_sample_value("stepmail_tracker_invalid_tokens_total", {"route": "open"})
    click_token = ClickToken(_ref("c-x"), 0, "https://shop.example.com/").encode(SIGNER)
    for token in ("garbage", click_token, OpenToken(_ref("c-x")).encode(SIGNER)[:-3] + "AAA"):
        response = await tracker.client.get(f"/o/{token}", headers={"User-Agent": BROWSER})
        assert response.status_code == 200
        assert response.content == PIXEL_GIF
    after = REGISTRY.get_sample_value("stepmail_tracker_invalid_tokens_total", {"route": "open"})
    assert (after or 0) == (before or 0) + 3
    await _marker(tracker)
    events = await _events(tracker, 1)
    assert [e.subject for e in events] == ["c-marker"]


async def test_a_token_of_a_rotated_out_signing_key_still_verifies(tracker: Tracker):
    token = OpenToken(_ref("c-old")).encode(OLD_SIGNER)
    assert token.startswith("k1.")
    await tracker.client.get(f"/o/{token}", headers={"User-Agent": BROWSER})
    (event,) = await _events(tracker, 1)
    assert event.subject == "c-old"


MACHINES = [
    ("Mozilla/5.0", "203.0.113.9", "privacy-proxy"),
    (
        "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
        "203.0.113.9",
        "mail-proxy",
    ),
    ("Barracuda Sentinel (EE)", "203.0.113.9", "link-scanner"),
    (BROWSER, "17.58.1.20", "proxy-network"),
    (BROWSER, "2001:db8::1", "proxy-network"),
    (None, "203.0.113.9", "no-user-agent"),
]


async def test_machine_opens_are_published_flagged_with_a_reason(tracker: Tracker):
    for user_agent, ip, _ in MACHINES:
        request = tracker.client.build_request("GET", f"/o/{OpenToken(_ref('c-m')).encode(SIGNER)}")
        request.headers["X-Forwarded-For"] = f"{ip}, 10.0.0.1"
        if user_agent:
            request.headers["User-Agent"] = user_agent
        else:
            del request.headers["user-agent"]
        assert (await tracker.client.send(request)).status_code == 200
    events = await _events(tracker, len(MACHINES))
    assert all(e.data["machine"] is True for e in events)
    assert [e.data["machine_reason"] for e in events] == [reason for _, _, reason in MACHINES]


def _delivery_event(ref: MailRef, at: dt.datetime, state: str = "sent") -> CloudEvent:
    """A delivery event as the sender writes it."""
    return CloudEvent(
        type=f"stepmail.delivery.{state}.v1",
        source="urn:stepmail:sender",
        subject=ref.contact_id,
        data={
            "message_id": ref.message_id,
            "contact_id": ref.contact_id,
            "scenario": {"id": ref.scenario_id, "version": ref.scenario_version},
            "step": {"id": ref.step_id, "index": ref.step_index},
            "state": state,
            "attempt": 1,
            **({"smtp_code": 250, "smtp_response": "OK"} if state == "sent" else {}),
            "at": at.isoformat(),
        },
    )


async def _recorded(tracker: Tracker, message_id: str) -> dt.datetime | None:
    conn = await asyncpg.connect(tracker.database_url)
    try:
        at: dt.datetime | None = await conn.fetchval(
            "SELECT sent_at FROM tracker.deliveries WHERE message_id = $1", message_id
        )
        return at
    finally:
        await conn.close()


async def _deliver(tracker: Tracker, *events: CloudEvent) -> None:
    """Delivery events on the topic; wait until the tracker has the last one (a ``sent``)."""
    async with EventProducer(tracker.bootstrap, "test", enable_idempotence=False) as producer:
        for event in events:
            await producer.publish(tracker.topics.delivery_events, event, key=event.subject)
    deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)
    while not await _recorded(tracker, events[-1].data["message_id"]):
        assert dt.datetime.now(dt.UTC) < deadline, "delivery.sent never consumed"
        await asyncio.sleep(0.05)  # poll interval; the deadline decides


async def test_sent_mails_are_recorded_once_and_other_delivery_events_skipped(tracker: Tracker):
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    twice, sending, last = _ref("c-twice"), _ref("c-sending"), _ref("c-last")
    first = _delivery_event(twice, now)
    await _deliver(
        tracker,
        first,
        _delivery_event(twice, now + dt.timedelta(seconds=9)),
        first,
        _delivery_event(sending, now, "sending"),
        _delivery_event(last, now),
    )
    assert await _recorded(tracker, twice.message_id) == now, "the first sent time stays"
    assert await _recorded(tracker, sending.message_id) is None


async def test_a_click_seconds_after_delivery_is_a_machine_a_later_one_a_person(tracker: Tracker):
    now = dt.datetime.now(dt.UTC)
    fresh, older = _ref("c-fresh"), _ref("c-older")
    await _deliver(tracker, _delivery_event(fresh, now))
    await _deliver(tracker, _delivery_event(older, now - dt.timedelta(minutes=5)))
    for ref in (fresh, older):
        token = ClickToken(ref, 0, "https://shop.example.com/").encode(SIGNER)
        response = await tracker.client.get(f"/c/{token}", headers={"User-Agent": BROWSER})
        assert response.status_code == 302
    events = await _events(tracker, 2)
    by_contact = {e.subject: e.data for e in events}
    assert by_contact["c-fresh"]["machine"] is True
    assert by_contact["c-fresh"]["machine_reason"] == "too-soon-after-delivery"
    assert by_contact["c-older"]["machine"] is False


async def test_preference_centre_topics_unsubscribe_and_resubscribe(tracker: Tracker):
    ref = _ref("c-pref")
    path = f"/u/{UnsubscribeToken(ref, 'marketing').encode(SIGNER)}"
    page = await tracker.client.get(path)
    assert page.status_code == 200
    assert "お知らせ / News" in page.text
    assert 'name="topic" value="campaign" checked' in page.text

    saved = await tracker.client.post(path, data={"action": "topics", "topic": ["news"]})
    assert saved.status_code == 200
    assert "配信設定を保存しました" in saved.text
    page = await tracker.client.get(path)
    assert 'value="campaign" checked' not in page.text
    assert 'value="news" checked' in page.text

    gone = await tracker.client.post(path, data={"action": "unsubscribe"})
    assert gone.status_code == 200
    page = await tracker.client.get(path)
    assert "配信を再開する / Resubscribe" in page.text

    back = await tracker.client.post(path, data={"action": "resubscribe"})
    assert back.status_code == 200
    assert "配信を再開しました" in back.text
    again = await tracker.client.post(path, data={"List-Unsubscribe": "One-Click"})
    assert again.status_code == 200

    events = await _events(tracker, 4)
    assert [e.type.split(".")[2] for e in events] == [
        "unsubscribed",
        "unsubscribed",
        "resubscribed",
        "unsubscribed",
    ]
    assert events[0].data["topics"] == ["campaign"]
    assert "topics" not in events[1].data
    assert events[2].data["mail_kind"] == "marketing"
    # An opt-out after a re-subscribe is a new event, not a replay consumers would drop.
    assert len({e.id for e in events}) == 4
    assert all(e.subject == "c-pref" for e in events)


async def test_erasure_forgets_the_opt_out_state(tracker: Tracker):
    ref = _ref(f"c-erase-{uuid.uuid4().hex[:6]}")
    path = f"/u/{UnsubscribeToken(ref, 'marketing').encode(SIGNER)}"
    await tracker.client.post(path, data={"List-Unsubscribe": "One-Click"})
    assert "Resubscribe" in (await tracker.client.get(path)).text
    erased = CloudEvent(
        type=event_types.CONTACT_ERASED,
        source="urn:stepmail:orchestrator",
        subject=ref.contact_id,
        data={"contact_id": ref.contact_id, "requested_at": dt.datetime.now(dt.UTC).isoformat()},
    )
    async with EventProducer(tracker.bootstrap, "test", enable_idempotence=False) as producer:
        await producer.publish(tracker.topics.contact_events, erased, key=ref.contact_id)
    deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)
    while "Resubscribe" in (await tracker.client.get(path)).text:
        assert dt.datetime.now(dt.UTC) < deadline, "erasure never applied"
        await asyncio.sleep(0.05)  # poll interval; the deadline decides


def _sns_notification(notification: dict[str, object], version: str = "1") -> dict[str, str]:
    message = {
        "Type": "Notification",
        "MessageId": str(uuid.uuid4()),
        "TopicArn": TOPIC_ARN,
        "Message": orjson.dumps(notification).decode(),
        "Timestamp": "2024-05-01T02:03:04.567Z",
        "SignatureVersion": version,
        "SigningCertURL": CERT_URL,
        "UnsubscribeURL": "https://sns.ap-northeast-1.amazonaws.com/?Action=Unsubscribe",
    }
    algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
    signature = SNS_KEY.sign(sns_string_to_sign(message), padding.PKCS1v15(), algorithm)
    message["Signature"] = base64.b64encode(signature).decode()
    return message


def _ses_bounce(message_id: str) -> dict[str, object]:
    return {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": "Permanent",
            "bounceSubType": "General",
            "bouncedRecipients": [
                {
                    "emailAddress": "jane@example.com",
                    "action": "failed",
                    "status": "5.1.1",
                    "diagnosticCode": "smtp; 550 5.1.1 user unknown",
                }
            ],
            "timestamp": "2024-05-01T02:03:04.000Z",
            "feedbackId": "0102018f2b-bounce-feedback-id",
            "reportingMTA": "dsn; a8-70.smtp-out.amazonses.com",
        },
        "mail": {
            "timestamp": "2024-05-01T02:03:00.000Z",
            "source": "news@shop.example.jp",
            "sourceArn": "arn:aws:ses:ap-northeast-1:123456789012:identity/shop.example.jp",
            "messageId": "0102018f2b-ses-message-id",
            "destination": ["jane@example.com"],
            "headersTruncated": False,
            "headers": [
                {"name": "From", "value": "news@shop.example.jp"},
                {"name": "X-Stepmail-Message-Id", "value": message_id},
            ],
        },
    }


def _ses_complaint() -> dict[str, object]:
    return {
        "notificationType": "Complaint",
        "complaint": {
            "userAgent": "ExampleCorp Feedback Loop (V0.01)",
            "complainedRecipients": [{"emailAddress": "richard@example.com"}],
            "complaintFeedbackType": "abuse",
            "arrivalDate": "2024-05-01T02:04:00.000Z",
            "timestamp": "2024-05-01T02:04:01.000Z",
            "feedbackId": "0102018f2b-complaint-feedback-id",
        },
        "mail": {
            "timestamp": "2024-05-01T02:03:00.000Z",
            "messageId": "0102018f2b-ses-message-id-2",
            "source": "news@shop.example.jp",
            "destination": ["richard@example.com"],
        },
    }


async def test_ses_bounce_and_complaint_via_signed_sns_become_events(tracker: Tracker):
    bounce = await tracker.client.post(
        "/v1/feedback/ses", content=orjson.dumps(_sns_notification(_ses_bounce("m-42"), "1"))
    )
    assert bounce.status_code == 200, bounce.text
    complaint = await tracker.client.post(
        "/v1/feedback/ses", content=orjson.dumps(_sns_notification(_ses_complaint(), "2"))
    )
    assert complaint.status_code == 200, complaint.text
    assert tracker.fetched == [CERT_URL]  # fetched once, then cached
    bounced, complained = await _events(tracker, 2)
    assert bounced.type == event_types.ENGAGEMENT_BOUNCED
    assert bounced.data["recipient"] == "jane@example.com"
    assert bounced.data["bounce"] == "hard"
    assert bounced.data["dsn"] == "5.1.1"
    assert bounced.data["message_id"] == "m-42"
    assert bounced.data["source"] == "ses"
    assert complained.type == event_types.ENGAGEMENT_COMPLAINED
    assert complained.data["recipient"] == "richard@example.com"


async def test_sns_with_a_bad_signature_or_foreign_cert_url_is_refused(tracker: Tracker):
    tampered = _sns_notification(_ses_bounce("m-1"))
    tampered["Message"] = tampered["Message"].replace("jane@", "eve@")
    foreign = _sns_notification(_ses_bounce("m-1"))
    foreign["SigningCertURL"] = "https://sns.evil.example.com/cert.pem"
    plain_http = _sns_notification(_ses_bounce("m-1"))
    plain_http["SigningCertURL"] = CERT_URL.replace("https:", "http:")
    other_topic = _sns_notification(_ses_bounce("m-1"))
    other_topic["TopicArn"] = "arn:aws:sns:ap-northeast-1:999999999999:other"
    for message in (tampered, foreign, plain_http, other_topic):
        response = await tracker.client.post("/v1/feedback/ses", content=orjson.dumps(message))
        assert response.status_code == 403, message
        assert response.headers["content-type"] == "application/problem+json"
    assert CERT_URL.replace("https:", "http:") not in tracker.fetched
    assert "https://sns.evil.example.com/cert.pem" not in tracker.fetched
    await _marker(tracker)
    assert [e.subject for e in await _events(tracker, 1)] == ["c-marker"]


async def test_sns_subscription_confirmation_is_confirmed_when_enabled(tracker: Tracker):
    message = {
        "Type": "SubscriptionConfirmation",
        "MessageId": str(uuid.uuid4()),
        "Token": "2336412f37fb687f5d51e6e2425c464de12884",
        "TopicArn": TOPIC_ARN,
        "Message": f"You have chosen to subscribe to the topic {TOPIC_ARN}.",
        "SubscribeURL": "https://sns.ap-northeast-1.amazonaws.com/?Action=ConfirmSubscription"
        f"&TopicArn={TOPIC_ARN}&Token=2336412f37fb687f5d51e6e2425c464de12884",
        "Timestamp": "2024-05-01T02:00:00.000Z",
        "SignatureVersion": "1",
        "SigningCertURL": CERT_URL,
    }
    message["Signature"] = base64.b64encode(
        SNS_KEY.sign(sns_string_to_sign(message), padding.PKCS1v15(), hashes.SHA1())
    ).decode()
    response = await tracker.client.post("/v1/feedback/ses", content=orjson.dumps(message))
    assert response.status_code == 200
    assert response.json() == {"status": "confirmed"}
    assert message["SubscribeURL"] in tracker.fetched


def _sendgrid_events() -> list[dict[str, object]]:
    return [
        {
            "email": "example@test.com",
            "timestamp": 1513299569,
            "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
            "event": "bounce",
            "category": "cat facts",
            "sg_event_id": "6g4ZI7SA-xmRDv57GoPIPw==",
            "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
            "reason": "500 unknown recipient",
            "status": "5.0.0",
            "type": "bounce",
            "stepmail_message_id": "m-sg-1",
        },
        {
            "email": "example2@test.com",
            "timestamp": 1513299569,
            "event": "spamreport",
            "sg_event_id": "37nvH5QBz858KGVYCM4uOA==",
            "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
        },
        {
            "email": "example3@test.com",
            "timestamp": 1513299569,
            "event": "open",
            "sg_event_id": "FOTFFO0ecsBE-zxFXfs6WA==",
        },
    ]


def _sendgrid_headers(body: bytes, timestamp: str) -> dict[str, str]:
    signature = SG_KEY.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "Content-Type": "application/json",
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
    }


async def test_sendgrid_signed_events_become_bounced_and_complained(tracker: Tracker):
    body = orjson.dumps(_sendgrid_events())
    timestamp = str(int(dt.datetime.now(dt.UTC).timestamp()))
    response = await tracker.client.post(
        "/v1/feedback/sendgrid", content=body, headers=_sendgrid_headers(body, timestamp)
    )
    assert response.status_code == 200, response.text
    bounced, complained = await _events(tracker, 2)
    assert bounced.type == event_types.ENGAGEMENT_BOUNCED
    assert bounced.data["bounce"] == "hard"
    assert bounced.data["message_id"] == "m-sg-1"
    assert complained.type == event_types.ENGAGEMENT_COMPLAINED
    assert complained.data["recipient"] == "example2@test.com"


async def test_sendgrid_bad_signatures_are_refused_and_publish_nothing(tracker: Tracker):
    body = orjson.dumps(_sendgrid_events())
    now = str(int(dt.datetime.now(dt.UTC).timestamp()))
    good = _sendgrid_headers(body, now)
    reserialised = orjson.dumps(_sendgrid_events(), option=orjson.OPT_INDENT_2)
    stale = str(int(dt.datetime.now(dt.UTC).timestamp()) - 3600)
    cases = [
        (reserialised, good, 403),
        (body, {**good, "X-Twilio-Email-Event-Webhook-Timestamp": str(int(now) + 1)}, 403),
        (body, _sendgrid_headers(body, stale), 401),
        (body, {"Content-Type": "application/json"}, 401),
    ]
    for content, headers, status in cases:
        response = await tracker.client.post(
            "/v1/feedback/sendgrid", content=content, headers=headers
        )
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
    await _marker(tracker)
    assert [e.subject for e in await _events(tracker, 1)] == ["c-marker"]


async def test_complaint_ratio_gauge_follows_the_window(tracker: Tracker):
    now = dt.datetime.now(dt.UTC)
    for _ in range(4):
        await _deliver(tracker, _delivery_event(_ref("c-rate"), now - dt.timedelta(minutes=1)))
    response = await tracker.client.post(
        "/v1/feedback/ses", content=orjson.dumps(_sns_notification(_ses_complaint()))
    )
    assert response.status_code == 200
    deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)
    while REGISTRY.get_sample_value("stepmail_tracker_complaint_ratio") != 0.25:
        assert dt.datetime.now(dt.UTC) < deadline, "the ratio never reached 1/4"
        await asyncio.sleep(0.05)  # poll interval; the deadline decides
    metrics_text = (await tracker.client.get("/metrics")).text
    assert "stepmail_tracker_unsubscribe_ratio" in metrics_text
    assert 'stepmail_tracker_complaints_total{source="ses"}' in metrics_text
