"""A realistic BEP-1052 data set for the demo and the benchmarks."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from ..models import ScopeType
from ..policy import app_config_fragments, app_config_policies, domains, users

P, D, DUD, U = ScopeType.PUBLIC, ScopeType.DOMAIN, ScopeType.DOMAIN_USER_DEFAULTS, ScopeType.USER

# Config names as a WebUI would have them, with the scopes each policy allows.
POLICIES: dict[str, list[ScopeType]] = {
    "webui": [P, D, DUD, U],
    "theme": [P, DUD, U],
    "notebook": [P, D, U],
    "resource_limits": [P, D, DUD],
    "shortcuts": [P, U],
}


@dataclass(frozen=True)
class SeedPlan:
    domains: int = 20
    users: int = 5000
    user_fragment_ratio: float = 0.3  # share of users with USER fragments of their own
    seed: int = 1052


@dataclass
class SeededData:
    domains: list[str]
    users: dict[uuid.UUID, str]  # user -> domain
    names: list[str] = field(default_factory=lambda: list(POLICIES))
    fragments: int = 0

    def members(self, domain: str) -> list[uuid.UUID]:
        return [user for user, d in self.users.items() if d == domain]


def _config(rng: random.Random, name: str, scope: ScopeType) -> dict[str, object]:
    return {
        "source": scope.value,
        "version": rng.randint(1, 100),
        name: {"enabled": rng.random() < 0.8, "level": rng.randint(0, 5), scope.value: True},
        "tags": rng.sample(["gpu", "cpu", "beta", "lab", "prod", "edu"], k=2),
    }


async def reset(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "TRUNCATE app_config_fragments, app_config_policies, users, domains,"
                " app_config_invalidation_outbox CASCADE"
            )
        )


@dataclass
class SeedRows:
    """Every row of a data set, built before any is written (so progress has a total)."""

    data: SeededData
    batches: list[tuple[Any, list[dict[str, object]]]]

    @property
    def total(self) -> int:
        return sum(len(rows) for _, rows in self.batches)


def plan_rows(plan: SeedPlan = SeedPlan()) -> SeedRows:
    """Domains, users, policies and fragments at every scope, deterministic per seed."""
    rng = random.Random(plan.seed)
    domain_names = [f"domain-{i:02d}" for i in range(plan.domains)]
    members = {
        uuid.UUID(int=rng.getrandbits(128), version=4): rng.choice(domain_names)
        for _ in range(plan.users)
    }
    fragments: list[dict[str, object]] = []
    for name, scopes in POLICIES.items():
        fragments.append(_fragment(P, "public", name, _config(rng, name, P)))
        for domain in domain_names:
            for scope in (D, DUD):
                if scope in scopes and rng.random() < 0.6:
                    fragments.append(_fragment(scope, domain, name, _config(rng, name, scope)))
    user_names = [n for n, s in POLICIES.items() if U in s]
    for user in members:
        if rng.random() < plan.user_fragment_ratio:
            for name in rng.sample(user_names, k=2):
                fragments.append(_fragment(U, str(user), name, _config(rng, name, U)))
    policies = [
        {"id": uuid.uuid4(), "config_name": n, "scope_sources": [s.value for s in scopes]}
        for n, scopes in POLICIES.items()
    ]
    batches: list[tuple[Any, list[dict[str, object]]]] = [
        (domains, [{"name": d} for d in domain_names])
    ]
    user_rows: list[dict[str, object]] = [{"uuid": u, "domain_name": d} for u, d in members.items()]
    batches += [(users, user_rows[i : i + 1000]) for i in range(0, len(user_rows), 1000)]
    batches.append((app_config_policies, policies))
    batches += [
        (app_config_fragments, fragments[i : i + 1000]) for i in range(0, len(fragments), 1000)
    ]
    data = SeededData(domains=domain_names, users=members, fragments=len(fragments))
    return SeedRows(data=data, batches=batches)


async def write_rows(
    engine: AsyncEngine, rows: SeedRows, on_batch: Callable[[int], None] | None = None
) -> SeededData:
    """Insert the rows in one transaction; ``on_batch(n)`` after each batch of n rows."""
    async with engine.begin() as conn:
        for table, batch in rows.batches:
            if batch:
                await conn.execute(insert(table), batch)
            if on_batch is not None:
                on_batch(len(batch))
    return rows.data


async def seed(engine: AsyncEngine, plan: SeedPlan = SeedPlan()) -> SeededData:
    return await write_rows(engine, plan_rows(plan))


def _fragment(
    scope: ScopeType, scope_id: str, name: str, config: dict[str, object]
) -> dict[str, object]:
    return {
        "id": uuid.uuid4(),
        "scope_type": scope.value,
        "scope_id": scope_id,
        "name": name,
        "extra_config": config,
    }
