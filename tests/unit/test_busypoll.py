"""busy_poll = "auto": the adaptive policy's success history (io/busypoll.py), pure."""

from __future__ import annotations

from netstack.io.busypoll import MAX_BACKOFF, MIN_JUDGED, AdaptiveBusyPoll

SPIN = 40e-6  # a spin long enough to be judged for sharing


def _pattern(policy: AdaptiveBusyPoll, turns: int) -> list[bool]:
    return [policy.should_spin() for _ in range(turns)]


def test_spins_while_spins_find_frames_alone() -> None:
    policy = AdaptiveBusyPoll()
    for _ in range(100):
        assert policy.should_spin()
        policy.record(True, SPIN, SPIN)
    assert policy.backoff == 0 and policy.skip == 0
    assert (policy.spins, policy.found, policy.contended) == (100, 100, 0)


def test_a_failed_spin_backs_off_at_once_and_doubles_up_to_the_cap() -> None:
    policy = AdaptiveBusyPoll()
    skipped = []
    for _ in range(10):  # every spin finds nothing: an idle-ish or slow peer
        n = 0
        while not policy.should_spin():
            n += 1
        skipped.append(n)
        policy.record(False, SPIN, SPIN)
    # none before the first spin, then 1 turn, doubling per failure in a row, up to the cap
    assert skipped == [0, 1, 2, 4, 8, 16, 32, 64, 64, 64]
    assert MAX_BACKOFF == 64 and policy.spins == 10 and policy.found == 0


def test_one_success_after_failures_resets_the_back_off() -> None:
    policy = AdaptiveBusyPoll()
    for _ in range(8):
        policy.record(False, SPIN, SPIN)
    assert policy.backoff == MAX_BACKOFF
    policy.skip = 0  # the back-off served
    policy.record(True, SPIN, SPIN)
    assert policy.backoff == 0 and _pattern(policy, 3) == [True, True, True]


def test_a_spin_that_shared_its_cpu_counts_as_a_failure_even_if_it_found() -> None:
    policy = AdaptiveBusyPoll()
    policy.record(True, SPIN, 0.5 * SPIN)  # another task had half of the CPU meanwhile
    assert policy.contended == 1 and policy.found == 1
    assert policy.backoff == 1 and _pattern(policy, 2) == [False, True]


def test_a_short_spin_is_not_judged_for_sharing() -> None:
    policy = AdaptiveBusyPoll()
    policy.record(True, MIN_JUDGED / 2, 0.0)  # found at the first look: clock noise
    assert policy.contended == 0 and policy.backoff == 0 and policy.should_spin()
