from editflow.core.backoff import Backoff


def test_delays_double_up_to_the_maximum_and_reset_after_a_success() -> None:
    backoff = Backoff(0.5, 3.0)
    assert [backoff.grow() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.delay == 0.5
