"""How much of everything one bench run does: ``FULL`` (``make bench``), ``QUICK``
(``--quick``, CI) and ``TINY`` (the test suite)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BenchSizes:
    """How much of everything one run does."""

    name: str
    rounds: int  # interleaved rounds per latency comparison
    outage_rounds: int  # rounds of g's one-task reads (each timeout costs 250 ms of them)
    ops_per_round: int  # operations per variant per round, one task
    tasks: int  # concurrent tasks in the concurrent comparisons
    ops_per_task: int  # operations per task per variant per round
    races: int  # fill-vs-invalidation races per write shape
    race_wave: int  # races running at the same time
    fanout_users: tuple[int, ...]  # users of the invalidated domain (all of the prefix's)
    fanout_names: int  # cached names per user
    follow_writes: int  # plain-SQL writes timed from COMMIT to served (scenario l)
    memory_users: int  # users x len(CONFIG_NAMES) entries for the memory figures
    server_cost_calls: int  # calls per script for INFO commandstats
    refusal_fills: int  # fills per variant while other scopes are invalidated (h)
    refusal_writers: int  # concurrent writers invalidating those other scopes (h)
    churn_users: int  # users x len(CONFIG_NAMES) entries at the index's peak (i)
    churn_traffic_users: int  # other users filled again and again after the peak (i)
    churn_ttl_s: int  # the TTL of every entry of scenario i
    churn_extra_s: int  # how long traffic goes on after the peak's entries expired (i)
    cluster_users: int  # users x len(CONFIG_NAMES) entries on each side: memory, reads (j)
    cluster_user_invalidations: int  # USER invalidations per variant per round (j)
    cluster_domain_users: int  # users of the domain invalidated per variant per round (j)
    local_users: int  # users whose config every cache of scenario k holds
    local_window_writes: int  # writes whose cross-process window is measured (k)
    failovers: int  # primaries killed under Sentinel (m)
    ranked_users: int  # users with a USER fragment of each name in the ranked model (n)
    fill_concurrency: int = 64


FULL = BenchSizes(
    name="full",
    rounds=20,
    outage_rounds=20,
    ops_per_round=500,
    tasks=50,
    ops_per_task=40,
    races=1000,
    race_wave=20,
    fanout_users=(1_000, 10_000, 100_000),
    fanout_names=5,
    follow_writes=1_000,
    memory_users=10_000,
    server_cost_calls=5_000,
    refusal_fills=1_000,
    refusal_writers=20,
    churn_users=20_000,
    churn_traffic_users=300,
    churn_ttl_s=5,
    churn_extra_s=3,
    cluster_users=20_000,
    cluster_user_invalidations=100,
    cluster_domain_users=2_000,
    local_users=2_000,
    local_window_writes=5_000,
    failovers=5,
    ranked_users=5_000,
)
QUICK = BenchSizes(
    name="quick",
    rounds=3,
    outage_rounds=2,
    ops_per_round=100,
    tasks=50,
    ops_per_task=10,
    races=100,
    race_wave=20,
    fanout_users=(200, 2_000),
    fanout_names=5,
    follow_writes=30,
    memory_users=1_000,
    server_cost_calls=500,
    refusal_fills=200,
    refusal_writers=20,
    churn_users=1_000,
    churn_traffic_users=20,
    churn_ttl_s=2,
    churn_extra_s=1,
    cluster_users=500,
    cluster_user_invalidations=20,
    cluster_domain_users=300,
    local_users=500,
    local_window_writes=200,
    failovers=1,
    ranked_users=200,
)
# For the test suite: every scenario, every code path, in seconds.
TINY = BenchSizes(
    name="tiny",
    rounds=2,
    outage_rounds=2,
    ops_per_round=20,
    tasks=50,
    ops_per_task=2,
    races=20,
    race_wave=10,
    fanout_users=(50, 200),
    fanout_names=5,
    follow_writes=10,
    memory_users=50,
    server_cost_calls=50,
    refusal_fills=40,
    refusal_writers=5,
    churn_users=100,
    churn_traffic_users=5,
    churn_ttl_s=1,
    churn_extra_s=1,
    cluster_users=50,
    cluster_user_invalidations=5,
    cluster_domain_users=150,  # past one call's clean-up budget: the background steps run
    local_users=50,
    local_window_writes=20,
    failovers=1,
    ranked_users=40,
)
SIZES = {sizes.name: sizes for sizes in (FULL, QUICK, TINY)}
