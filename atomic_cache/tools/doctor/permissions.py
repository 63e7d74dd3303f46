"""The doctor's permission check: may the user the doctor is connected as run every
command the cache sends (``atomic-cache acl``'s list), on the keys under the prefix and
its announcement channel?

How it finds out, without running any of those commands on the cache's keys:

1. ``ACL DRYRUN <user> <command> <args>`` for each command, when the user may run it
   (an administrator; the user's name is the URL's, else ``ACL WHOAMI``'s): exact, and
   changes nothing.
2. Else a read-only probe script (``#!lua flags=no-writes``), loaded with ``SCRIPT LOAD``
   and run with ``EVALSHA_RO`` (or ``EVALSHA``, ``EVAL_RO``, ``EVAL``, whichever the user
   may run), asks ``redis.acl_check_cmd`` about each command, as the calling user. For a
   refused one it then calls the command with ``redis.pcall`` to learn why: the server
   checks ACL before running anything, so a refused call runs nothing (and a read-only
   script could not write anyway), and its error names the command, the key or the
   channel. Each such refusal adds an entry to ``ACL LOG``, and the script stays in the
   server's script cache, as the package's own do.
3. Else (the user may run no script at all) the harmless probes: ``PING``, ``SCRIPT
   EXISTS``, and the refusals of the script calls; every other command is reported as
   not checked, and the refused script calls as missing.

Every probe has the command's real arity (``redis.acl_check_cmd`` checks none, and a
key-less ``EVALSHA`` crashed Valkey 9.1 when asked about a user without every key), and
names ``<prefix>:seq`` (a key the cache writes) and ``<prefix>:invalidations`` (the
channel it announces on), so a pattern that allows reads only (``%R~``) shows up on the
commands that write. ``SUBSCRIBE`` cannot be called from a script: a refused one is put
down to the channel when ``PUBLISH`` on it was refused for the channel, and to the
command when ``PUBLISH`` was allowed.
"""

from __future__ import annotations

import enum
import re
import shlex
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from glide import GlideError, RequestError

from .. import acl
from .checks import Check, Status

# Sends one command to the server the doctor is connected to (gather.Send).
Send: TypeAlias = Callable[[list[str]], Awaitable[object]]

KEY = "<key>"
CHANNEL = "<channel>"
_SHA = "0" * 40  # no script has it: EVALSHA answers NOSCRIPT when permitted

# Arguments giving each command (in ACL's spelling) its arity; a command not listed takes
# none (TIME, PING, INFO, READONLY, CLUSTER|NODES, ROLE...).
PROBE_ARGS: Mapping[str, tuple[str, ...]] = {
    "del": (KEY,),
    "exists": (KEY,),
    "get": (KEY,),
    "hget": (KEY, "n"),
    "hgetall": (KEY,),
    "hincrby": (KEY, "n", "1"),
    "hmget": (KEY, "n"),
    "hset": (KEY, "n", "1"),
    "lindex": (KEY, "0"),
    "llen": (KEY,),
    "lpop": (KEY,),
    "lpush": (KEY, "x"),
    "lset": (KEY, "0", "x"),
    "pexpire": (KEY, "1"),
    "pttl": (KEY,),
    "publish": (CHANNEL, "x"),
    "sadd": (KEY, "x"),
    "scan": ("0",),
    "set": (KEY, "x"),
    "smembers": (KEY,),
    "smismember": (KEY, "x"),
    "type": (KEY,),
    "unlink": (KEY,),
    "zadd": (KEY, "1", "x"),
    "zcard": (KEY,),
    "zrange": (KEY, "0", "1"),
    "zrangebyscore": (KEY, "0", "1"),
    "zrem": (KEY, "x"),
    "zscan": (KEY, "0"),
    "evalsha": (_SHA, "1", KEY),
    "evalsha_ro": (_SHA, "1", KEY),
    "eval": ("return 1", "1", KEY),
    "eval_ro": ("return 1", "1", KEY),
    "script|load": ("return 1",),
    "script|exists": (_SHA,),
    "subscribe": (CHANNEL,),
    "ssubscribe": (CHANNEL,),
    "spublish": (CHANNEL, "x"),
    "client|setname": ("atomic_cache",),
    "select": ("0",),
    "wait": ("0", "0"),
}

# The same command with no key, where scripts may not call the command itself (so its
# refusal says nothing of why): if this form is allowed, the key was refused.
KEYLESS: Mapping[str, tuple[str, ...]] = {
    "evalsha": (_SHA, "0"),
    "evalsha_ro": (_SHA, "0"),
    "eval": ("return 1", "0"),
    "eval_ro": ("return 1", "0"),
}
# A refused subscription is put down to what the matching publish was refused for.
_PUBLISHER = {"subscribe": "publish", "ssubscribe": "spublish"}

# The probe script. ARGV: for each command n and m, then its n words, then the m words of
# its key-less form (m = 0: none). Reply: one string per command: "+" allowed, "?" the
# server knows no such command, "=" its key-less form is allowed (so the key was
# refused), "-" its key-less form is refused too, else "!" and the refused call's error.
PROBE_SCRIPT = """#!lua flags=no-writes
local verdicts = {}
local i = 1
while i <= #ARGV do
  local n, m = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  local words, keyless = {}, {}
  for j = 1, n do words[j] = ARGV[i + 1 + j] end
  for j = 1, m do keyless[j] = ARGV[i + 1 + n + j] end
  local known, allowed = pcall(redis.acl_check_cmd, unpack(words))
  local verdict = '?'
  if known and allowed then
    verdict = '+'
  elseif known and m > 0 then
    verdict = redis.acl_check_cmd(unpack(keyless)) and '=' or '-'
  elseif known then
    -- Refused: the call meets the same ACL check before anything runs, and says why.
    local reply = redis.pcall(unpack(words))
    verdict = '!' .. tostring(type(reply) == 'table' and reply.err or '')
  end
  verdicts[#verdicts + 1] = verdict
  i = i + 2 + n + m
end
return verdicts
"""
_RUNNERS = ("EVALSHA_RO", "EVALSHA", "EVAL_RO", "EVAL")

BY_DRYRUN = "ACL DRYRUN"
BY_SCRIPT = "a read-only probe script (redis.acl_check_cmd)"
BY_PROBES = "harmless probes only (the user may run no script)"


class Verdict(enum.StrEnum):
    ALLOWED = "allowed"
    NO_COMMAND = "no command"
    NO_KEY = "no key"
    NO_CHANNEL = "no channel"
    REFUSED = "refused, reason unknown"
    UNCHECKED = "not checked"


@dataclass(frozen=True, slots=True)
class PermissionFacts:
    """What the server said about each command of ``acl_commands(cluster=cluster)`` for
    the connected user (``user``, when known), and how it was asked (``method``)."""

    prefix: str
    verdicts: Mapping[str, Verdict]
    method: str
    user: str | None = None
    cluster: bool = False


def _words(command: str, args: Sequence[str], prefix: str) -> list[str]:
    key, channel = f"{prefix}:seq", f"{prefix}:invalidations"
    filled = [key if a == KEY else channel if a == CHANNEL else a for a in args]
    return [*(word.upper() for word in command.split("|")), *filled]


def probe_words(command: str, prefix: str) -> list[str]:
    """``command`` (ACL's spelling, ``script|load``) as the words of its probe."""
    return _words(command, PROBE_ARGS.get(command, ()), prefix)


def _touches(command: str) -> Verdict | None:
    """What a refusal of ``command``'s probe can be for besides the command itself."""
    args = PROBE_ARGS.get(command, ())
    return Verdict.NO_KEY if KEY in args else Verdict.NO_CHANNEL if CHANNEL in args else None


def denied(error: BaseException) -> bool:
    """A refusal by ACL (glide says PermissionDenied; the server NOPERM)."""
    text = str(error)
    return "PermissionDenied" in text or "NOPERM" in text or "no permissions" in text.lower()


# How Valkey 8-9 and Redis 7.0 word a refusal, in ACL DRYRUN's reply, a NOPERM error and
# a script's failed call.
_REFUSED_FOR = (
    (
        Verdict.NO_KEY,
        re.compile(
            r"(' key|access a key|of the keys used as arguments"
            r"|keys mentioned in the command arguments)$"
        ),
    ),
    (
        Verdict.NO_CHANNEL,
        re.compile(
            r"(' channel|access a channel|of the channels used as arguments"
            r"|channel mentioned in the command)$"
        ),
    ),
    (Verdict.NO_COMMAND, re.compile(r"(' command|run this command or subcommand)$")),
)


def refusal(text: str, command: str) -> Verdict:
    """What a refusal of ``command``'s probe was for, from its words; a command whose
    probe names no key or channel can only have been refused itself."""
    words = text.strip().rstrip(".")
    for verdict, pattern in _REFUSED_FOR:
        if pattern.search(words):
            return verdict
    return Verdict.REFUSED if _touches(command) is not None else Verdict.NO_COMMAND


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


async def gather_permissions(
    send: Send, prefix: str, *, cluster: bool = False, user: str | None = None
) -> PermissionFacts:
    """Ask the server, as the connected user (``user``: its name, when the caller knows
    it), about every command the cache sends (see the module's docstring for how).
    Connection errors propagate."""
    commands = acl.acl_commands(cluster=cluster)
    if user is None:
        try:
            user = _text(await send(["ACL", "WHOAMI"]))
        except RequestError:
            user = None
    if user is not None:
        verdicts = await _by_dryrun(send, user, commands, prefix)
        if verdicts is not None:
            return PermissionFacts(prefix, verdicts, BY_DRYRUN, user, cluster)
    refusals: dict[str, Verdict] = {}
    verdicts = await _by_script(send, commands, prefix, refusals)
    if verdicts is not None:
        return PermissionFacts(prefix, verdicts, BY_SCRIPT, user, cluster)
    verdicts = await _by_probes(send, commands, prefix, refusals)
    return PermissionFacts(prefix, verdicts, BY_PROBES, user, cluster)


async def _by_dryrun(
    send: Send, user: str, commands: Sequence[str], prefix: str
) -> dict[str, Verdict] | None:
    """The verdicts of ACL DRYRUN, or None if this user may not run it."""
    verdicts: dict[str, Verdict] = {}
    for command in commands:
        try:
            reply = await send(["ACL", "DRYRUN", user, *probe_words(command, prefix)])
        except RequestError:
            if not verdicts:
                return None  # this user may not ask, or the server has no ACL DRYRUN
            verdicts[command] = Verdict.UNCHECKED  # the server knows no such command
            continue
        text = _text(reply)
        verdicts[command] = Verdict.ALLOWED if text == "OK" else refusal(text, command)
    return _subscriptions(verdicts)


def _subscriptions(verdicts: dict[str, Verdict]) -> dict[str, Verdict]:
    """A subscription refused for a reason unknown is put down to what publishing on the
    same channel was refused for (allowed: the subscription command itself)."""
    for subscribe, publish in _PUBLISHER.items():
        if verdicts.get(subscribe) is Verdict.REFUSED:
            published = verdicts.get(publish)
            if published is Verdict.ALLOWED:
                verdicts[subscribe] = Verdict.NO_COMMAND
            elif published is Verdict.NO_CHANNEL:
                verdicts[subscribe] = Verdict.NO_CHANNEL
    return verdicts


async def _by_script(
    send: Send, commands: Sequence[str], prefix: str, refusals: dict[str, Verdict]
) -> dict[str, Verdict] | None:
    """The verdicts of the probe script, or None if the user may run it in no way (the
    refusals met on the way are left in ``refusals``)."""
    argv: list[str] = []
    for command in commands:
        words = probe_words(command, prefix)
        keyless = _words(command, KEYLESS[command], prefix) if command in KEYLESS else []
        argv += [str(len(words)), str(len(keyless)), *words, *keyless]
    sha: str | None = None
    try:
        sha = _text(await send(["SCRIPT", "LOAD", PROBE_SCRIPT]))
    except RequestError as error:  # refused, or no scripting on this server
        if denied(error):
            refusals["script|load"] = refusal(str(error), "script|load")
    for runner in _RUNNERS:
        by_sha = runner.startswith("EVALSHA")
        if by_sha and sha is None:
            continue
        try:
            reply = await send([runner, (sha if by_sha else None) or PROBE_SCRIPT, "0", *argv])
        except RequestError as error:  # refused, or NOSCRIPT, or no scripting
            if denied(error):
                refusals[runner.lower()] = refusal(str(error), runner.lower())
            continue
        answers = [_text(answer) for answer in reply] if isinstance(reply, list) else []
        verdicts = dict.fromkeys(commands, Verdict.UNCHECKED)
        for command, answer in zip(commands, answers, strict=False):
            if answer == "+":
                verdicts[command] = Verdict.ALLOWED
            elif answer == "=":
                verdicts[command] = _touches(command) or Verdict.REFUSED
            elif answer == "-":
                verdicts[command] = Verdict.NO_COMMAND
            elif answer.startswith("!"):
                verdicts[command] = refusal(answer[1:], command)
        return _subscriptions(verdicts)
    return None


async def _by_probes(
    send: Send, commands: Sequence[str], prefix: str, refusals: Mapping[str, Verdict]
) -> dict[str, Verdict]:
    """What harmless calls tell: the refusals met while trying to run the probe script,
    and the answers to calls that change nothing when permitted."""
    verdicts = dict.fromkeys(commands, Verdict.UNCHECKED)
    verdicts.update((c, v) for c, v in refusals.items() if c in verdicts)
    for command in ("ping", "script|exists", "evalsha", "evalsha_ro"):
        if command not in verdicts or command in refusals:
            continue
        try:
            await send(probe_words(command, prefix))
        except RequestError as error:
            if denied(error):
                verdicts[command] = refusal(str(error), command)
            elif "NoScript" in str(error) or "NOSCRIPT" in str(error):
                verdicts[command] = Verdict.ALLOWED  # past ACL, to the script lookup
            continue
        except GlideError:
            continue
        verdicts[command] = Verdict.ALLOWED
    return verdicts


def acl_line_hint(facts: PermissionFacts) -> str:
    """The command that prints the fix: the ACL SETUSER line for this prefix and user."""
    parts = ["atomic-cache", "acl", "--prefix", facts.prefix, "--user", facts.user or "USER"]
    if facts.cluster:
        parts.append("--cluster")
    return " ".join(shlex.quote(part) for part in parts)


def _patterns(prefix: str) -> tuple[str, str]:
    """The key pattern and the channel of ``atomic-cache acl``'s line for ``prefix``."""
    words = acl.acl_setuser("USER", prefix).split()
    return (
        next(word for word in words if word.startswith("~")),
        next(word for word in words if word.startswith("&")),
    )


def check_permissions(facts: PermissionFacts) -> Check:
    """FAIL naming every command, key pattern and channel the user lacks, with the fix;
    WARN when some could not be checked; OK when every one is allowed."""
    by_verdict: dict[Verdict, list[str]] = {verdict: [] for verdict in Verdict}
    for command, verdict in sorted(facts.verdicts.items()):
        by_verdict[verdict].append(command)
    who = f"user {facts.user!r}" if facts.user is not None else "this connection's user"
    key_pattern, channel = _patterns(facts.prefix)
    how = f"(asked by {facts.method})"
    lacking: list[str] = []
    if by_verdict[Verdict.NO_COMMAND]:
        lacking.append(f"commands {', '.join(by_verdict[Verdict.NO_COMMAND])}")
    for verdict, what in ((Verdict.NO_KEY, f"keys {key_pattern}"), (Verdict.NO_CHANNEL, channel)):
        refused = by_verdict[verdict]
        naming = [command for command in facts.verdicts if _touches(command) is verdict]
        if refused and len(refused) == len(naming):
            lacking.append(f"{what} (refused for all {len(naming)} commands naming one)")
        elif refused:
            lacking.append(f"{what} for {', '.join(refused)}")
    if by_verdict[Verdict.REFUSED]:
        unknown = ", ".join(by_verdict[Verdict.REFUSED])
        lacking.append(f"{unknown} (the command, its key or its channel)")
    unchecked = by_verdict[Verdict.UNCHECKED]
    if lacking:
        not_checked = f"; not checked: {', '.join(unchecked)}" if unchecked else ""
        return Check(
            "permissions",
            Status.FAIL,
            f"{who} lacks {'; '.join(lacking)}{not_checked} {how}. Fix: `{acl_line_hint(facts)}`"
            " prints the ACL SETUSER line to run as an administrator",
        )
    if unchecked:
        return Check(
            "permissions",
            Status.WARN,
            f"{who}: could not check {', '.join(unchecked)} {how}; the others are allowed",
        )
    return Check(
        "permissions",
        Status.OK,
        f"{who} may run all {len(facts.verdicts)} commands the cache sends, on"
        f" {key_pattern} and {channel} {how}",
    )
