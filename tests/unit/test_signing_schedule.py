"""Standard Webhooks signing (canonical vector, rotation) and the retry schedule."""

from __future__ import annotations

import random
from email.utils import formatdate

import pytest
from standardwebhooks.webhooks import Webhook

from daemon.alerts.outbox import new_event_id
from daemon.alerts.schedule import DEFAULT_DELAYS_S, RetrySchedule, parse_retry_after
from daemon.alerts.signing import SecretError, parse_secrets, secret_key, sign

VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_canonical_vector() -> None:
    sig = sign([secret_key(VECTOR_SECRET)], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_rotation_two_signatures_verified_by_standardwebhooks() -> None:
    import time

    old, new = "whsec_" + "A" * 32, VECTOR_SECRET
    body, ts = b'{"type":"call.summary"}', int(time.time())
    header = sign(parse_secrets(f"{old} {new}"), "msg_1", ts, body)
    assert header.count("v1,") == 2
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(ts), "webhook-signature": header}
    Webhook(new).verify(body, headers)  # a consumer that knows only the new key accepts it
    Webhook(old).verify(body, headers)


@pytest.mark.parametrize("bad", ["", "whsec_", "whsec_not base64!", "whsec_QUJD"])
def test_bad_secrets_refused(bad: str) -> None:
    with pytest.raises(SecretError):
        parse_secrets(bad)


def test_ids_have_no_dot_and_sort_by_time() -> None:
    a, b = new_event_id(1000.0), new_event_id(2000.0)
    assert a.startswith("msg_") and "." not in a and len(a) == 30 and a < b
    with pytest.raises(ValueError):
        sign([secret_key(VECTOR_SECRET)], "msg.1", 1, b"{}")


def test_schedule_reaches_hours_with_bounded_jitter() -> None:
    s = RetrySchedule(rng=random.Random(7))
    delays = [s.next_delay(i) for i in range(1, 13)]
    for d, base in zip(delays, DEFAULT_DELAYS_S, strict=True):
        assert 0.8 * base <= d <= 1.2 * base
    assert sum(DEFAULT_DELAYS_S) > 24 * 3600
    assert s.next_delay(99) <= 1.2 * DEFAULT_DELAYS_S[-1]


def test_retry_after_honoured_and_capped() -> None:
    s = RetrySchedule(rng=random.Random(1))
    assert s.next_delay(1, retry_after_s=120) >= 120
    assert s.next_delay(1, retry_after_s=10**9) <= 86400
    assert parse_retry_after("30", 0) == 30
    now = 1_700_000_000.0
    assert parse_retry_after(formatdate(now + 90, usegmt=True), now) == pytest.approx(90, abs=1)
    assert parse_retry_after("soon", now) is None and parse_retry_after(None, now) is None
