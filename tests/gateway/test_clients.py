"""Client IP behind proxies and the sliding-window rate limiter, as pure functions."""

from __future__ import annotations

import pytest

from editflow.gateway.clients import client_ip, identity_for, parse_networks
from editflow.gateway.ratelimit import SlidingWindowLimiter, retry_after

PROXIES = parse_networks(["10.0.0.0/8", "192.168.1.1"])


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("203.0.113.7", None, "203.0.113.7"),
        # An untrusted peer cannot choose its address by writing the header.
        ("203.0.113.7", "198.51.100.1", "203.0.113.7"),
        # A trusted proxy's header is believed: the client is the hop before it.
        ("10.0.0.2", "198.51.100.1", "198.51.100.1"),
        # Read right to left, skipping trusted hops; spoofed entries on the left are ignored.
        ("10.0.0.2", "1.2.3.4, 198.51.100.1, 192.168.1.1", "198.51.100.1"),
        ("10.0.0.2", "garbage, 198.51.100.1", "198.51.100.1"),
        ("10.0.0.2", "2001:db8::1", "2001:db8::1"),
        ("10.0.0.2", "198.51.100.1:4711", "198.51.100.1"),
        ("10.0.0.2", "10.0.0.9, 10.0.0.3", "10.0.0.9"),
    ],
)
def test_client_ip(peer: str, xff: str | None, expected: str) -> None:
    assert client_ip(peer, xff, PROXIES) == expected


def test_identity_is_the_token_digest_or_the_ip() -> None:
    assert identity_for("1.2.3.4", None) == "ip:1.2.3.4"
    a, b = identity_for("1.2.3.4", "tok-a"), identity_for("5.6.7.8", "tok-a")
    assert a == b and a.startswith("token:") and "tok-a" not in a
    assert identity_for("1.2.3.4", "tok-b") != a


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sixth_request_within_a_minute_is_refused_until_the_first_leaves_the_window() -> None:
    clock = Clock()
    limiter = SlidingWindowLimiter(5, clock=clock)
    for _ in range(5):
        assert limiter.check("a") == 0
        clock.now += 10
    wait = limiter.check("a")  # t=50 s: the first request (t=0) is 10 s from leaving
    assert wait == pytest.approx(10)
    assert retry_after(wait) == "10"
    assert limiter.check("b") == 0  # per client
    clock.now += 10
    assert limiter.check("a") == 0


def test_limiter_forgets_idle_clients_and_caps_how_many_it_tracks() -> None:
    clock = Clock()
    limiter = SlidingWindowLimiter(5, max_clients=3, clock=clock)
    for name in "abcd":
        limiter.check(name)
    assert len(limiter._hits) == 3
    clock.now += 61
    for name in "xy":
        limiter.check(name)
    assert set(limiter._hits) <= {"b", "c", "d", "x", "y"} and len(limiter._hits) <= 3


def test_zero_means_unlimited() -> None:
    limiter = SlidingWindowLimiter(0)
    assert all(limiter.check("a") == 0 for _ in range(100))
