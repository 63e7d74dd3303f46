"""The queue of missed invalidations, pure: what it covers, and what a replay clears."""

from __future__ import annotations

import uuid

import pytest

from atomic_cache import AppConfigData, InvalidationTarget, ScopeType
from atomic_cache.resilience.pending import PendingInvalidations

USER = uuid.uuid4()
VALUE = AppConfigData(user_id=USER, domain_name="alpha", name="webui", config={"v": 1})


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (InvalidationTarget.of(ScopeType.USER, str(USER)), True),
        (InvalidationTarget.of(ScopeType.USER, str(USER), ["webui"]), True),
        (InvalidationTarget.of(ScopeType.USER, str(USER), ["theme"]), False),
        (InvalidationTarget.of(ScopeType.USER, str(uuid.uuid4())), False),
        (InvalidationTarget.of(ScopeType.DOMAIN, "alpha"), True),
        (InvalidationTarget.of(ScopeType.DOMAIN_USER_DEFAULTS, "alpha"), True),
        (InvalidationTarget.of(ScopeType.DOMAIN, "alpha", ["webui"]), True),
        (InvalidationTarget.of(ScopeType.DOMAIN, "alpha", ["theme"]), False),
        (InvalidationTarget.of(ScopeType.DOMAIN, "beta"), False),
        (InvalidationTarget.of(ScopeType.DOMAIN_USER_DEFAULTS, "beta"), False),
        (InvalidationTarget.of(ScopeType.PUBLIC, "public"), True),
        (InvalidationTarget.of(ScopeType.PUBLIC, "public", ["webui"]), True),
        (InvalidationTarget.of(ScopeType.PUBLIC, "public", ["theme"]), False),
    ],
)
def test_covers_each_scope_exactly(target: InvalidationTarget, expected: bool) -> None:
    pending = PendingInvalidations()
    pending.add([target], drop_catalogue=False)
    assert pending.covers(VALUE) is expected


def test_a_replay_never_clears_a_newer_failure_of_the_same_slice() -> None:
    """A replay carries a snapshot; a write whose invalidation fails while the replay is
    out adds the same slice again. The replay landing must not clear that newer one."""
    target = InvalidationTarget.of(ScopeType.DOMAIN, "alpha", ["webui"])
    pending = PendingInvalidations()
    pending.add([target], drop_catalogue=False)
    _, _, version = pending.snapshot()
    pending.add([target], drop_catalogue=False)  # the newer, failed invalidation
    pending.replayed(version)
    assert pending.targets == [target]
    assert pending.covers(VALUE)
    _, _, version = pending.snapshot()
    pending.replayed(version)
    assert not pending


def test_the_queue_collapses_into_everything_past_its_bound() -> None:
    pending = PendingInvalidations(max_targets=3)
    for _ in range(4):
        pending.add([InvalidationTarget.of(ScopeType.USER, str(uuid.uuid4()))], False)
    assert pending.targets == [InvalidationTarget.of(ScopeType.PUBLIC, "public")]
    assert pending.drop_catalogue
    assert pending.covers(VALUE)
