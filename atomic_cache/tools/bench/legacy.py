"""The former one-script design, for side-by-side rows: one script deletes every entry an
invalidation covers, and one global epoch is every fill token. Its scripts are
``legacy_lua/`` beside this module (the bench's own copy: they are not the library's
scripts); the bench runs them under a prefix of their own, in the same run."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

from glide import Batch, ExpirySet, ExpiryType, GlideClient

from ...cache.scripts import ScriptRegistry
from ...keys import encode_component, user_component
from ...models import PUBLIC_SCOPE_ID, AppConfigData, ScopeType
from ...targets import ScriptArg
from .server import as_text


def legacy_scripts() -> ScriptRegistry:
    """The one-script design's scripts (``legacy_lua/``), for side-by-side runs."""
    return ScriptRegistry(resources.files("atomic_cache.tools.bench") / "legacy_lua")


@dataclass(frozen=True, slots=True)
class LegacyKeys:
    """The keys of the one-script design: plain JSON entries, membership sets, and one
    global epoch counter whose value is every fill token."""

    prefix: str

    def entry(self, user: uuid.UUID | str, name: str) -> str:
        return f"{self.prefix}:merged:{user_component(user)}:{encode_component(name)}"

    def user_names(self, user: uuid.UUID | str) -> str:
        return f"{self.prefix}:user:{user_component(user)}:names"

    def domain_users(self, domain: str) -> str:
        return f"{self.prefix}:domain:{encode_component(domain)}:users"

    def name_users(self, name: str) -> str:
        return f"{self.prefix}:name:{encode_component(name)}:users"

    @property
    def all_users(self) -> str:
        return f"{self.prefix}:users"

    @property
    def epoch(self) -> str:
        return f"{self.prefix}:epoch"

    @property
    def catalogue(self) -> str:
        return f"{self.prefix}:names"


def _legacy_target(scope: ScopeType, scope_id: str, names: Sequence[str] | None) -> list[ScriptArg]:
    """One target of the legacy invalidate.lua: scope word, id, count, names."""
    if scope is ScopeType.USER:
        head: list[ScriptArg] = ["user", user_component(scope_id)]
    elif scope is ScopeType.PUBLIC:
        head = ["public", PUBLIC_SCOPE_ID]
    else:
        head = ["domain", encode_component(scope_id)]
    if names is None:
        return [*head, -1]
    return [*head, len(names), *(encode_component(name) for name in names)]


@dataclass
class LegacyCache:
    """The one-script design's calls (``legacy_lua/*.lua``, KEYS/ARGV as in their headers),
    without the decoding and checks of a cache source: what the bench times."""

    client: GlideClient
    registry: ScriptRegistry
    keys: LegacyKeys
    ttl_seconds: int = 600

    async def get(self, user: uuid.UUID, names: Sequence[str]) -> list[object]:
        """get.lua: [epoch, raw value per name]."""
        entries = [self.keys.entry(user, name) for name in names]
        reply = await self.registry.call(self.client, "get", [self.keys.epoch, *entries])
        if not isinstance(reply, list):
            raise RuntimeError(f"legacy get.lua answered {reply!r:.200}")
        return reply

    async def fill_token(self, user: uuid.UUID, name: str) -> str:
        """The epoch a miss hands out as its fill token."""
        return as_text((await self.get(user, [name]))[0])

    async def get_all(self, user: uuid.UUID) -> object:
        """get_all.lua: {epoch, names, values} of every cached name of the catalogue."""
        return await self.registry.call(
            self.client,
            "get_all",
            [self.keys.epoch, self.keys.catalogue],
            [self.keys.prefix, user_component(user)],
        )

    async def set_many(
        self,
        user: uuid.UUID,
        merged: Sequence[AppConfigData],
        fill_token: str | None = None,
        *,
        catalogue: Sequence[str] | None = None,
    ) -> bool:
        """set.lua: one user's configs and every membership; False when the token is stale."""
        keys = self.keys
        script_keys = [
            keys.user_names(user),
            keys.domain_users(merged[0].domain_name),
            keys.all_users,
            keys.epoch,
            keys.catalogue,
        ]
        args: list[ScriptArg] = [
            self.ttl_seconds,
            user_component(user),
            "0" if fill_token is None else "1",
            fill_token or "",
        ]
        if catalogue is None:
            args.append(-1)
        else:
            args += [len(catalogue), *(encode_component(name) for name in catalogue)]
        for item in merged:
            script_keys += [keys.entry(user, item.name), keys.name_users(item.name)]
            args += [encode_component(item.name), item.model_dump_json()]
        return await self.registry.call(self.client, "set", script_keys, args) == 1

    async def invalidate(
        self, scope: ScopeType, scope_id: str, names: Sequence[str] | None = None
    ) -> int:
        """invalidate.lua: delete every entry the target covers, in this one call."""
        reply = await self.registry.call(
            self.client,
            "invalidate",
            [self.keys.epoch, self.keys.all_users, self.keys.catalogue],
            [self.keys.prefix, "0", *_legacy_target(scope, scope_id, names)],
        )
        if not isinstance(reply, int):
            raise RuntimeError(f"legacy invalidate.lua answered {reply!r:.200}")
        return reply


def legacy_batch(
    keys: LegacyKeys, user: uuid.UUID, domain: str, name: str, payload: str, ttl: int
) -> Batch:
    """Backend.AI's former cache write: one non-atomic pipeline of SET EX + SADD + EXPIRE."""
    batch = Batch(is_atomic=False)
    batch.set(keys.entry(user, name), payload, expiry=ExpirySet(ExpiryType.SEC, ttl))
    batch.sadd(keys.domain_users(domain), [str(user)])
    batch.expire(keys.domain_users(domain), ttl)
    return batch
