"""The Matrix thread: its own asyncio loop beside the reconcile loop, never blocking it.

The daemon (``webhook/daemon.py``) builds one :class:`MatrixService` when ``matrix.enabled``
and starts it with the process. On its thread it:

1. checks the set-up — the access token (``whoami``; the token's device gets
   ``matrix.device_name`` as its display name), the room (an alias is resolved; the bot
   joins), that the room is not encrypted (unsupported) — and reports any problem through
   :meth:`MatrixService.status` (``/readyz`` shows Matrix degraded; reconciling goes on), trying
   again with backoff;
2. every ``matrix.poll_interval``: lets the notifier queue messages for new task events and
   agent changes, then drains the outbox (:mod:`reconciler.matrix.delivery`), backing off while
   the homeserver is away and honouring 429's ``retry_after_ms``;
3. long-polls ``/sync`` for ``!fleet`` commands in the room (its own messages ignored), runs
   each on a worker thread (:mod:`reconciler.matrix.commands`) and queues the answer in a thread
   of the command. The sync token is kept in the store: a restart neither replays old commands
   nor misses new ones; on the very first start, what was sent before it started is skipped.
   A sync that shows the room's encryption turned on stops all posting there (Matrix shown
   degraded; messages wait in the outbox): the bot never writes plain text into an encrypted
   room.

The bot uses its one configured access token and the device it belongs to, never a fresh
login, so the homeserver de-duplicates the transaction ids of repeated sends.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from aiohttp import ClientError
from nio import (  # type: ignore[import-untyped]
    AsyncClient,
    AsyncClientConfig,
    ErrorResponse,
    JoinResponse,
    RoomGetStateEventResponse,
    RoomResolveAliasResponse,
    RoomSendResponse,
    SyncResponse,
    UpdateDeviceResponse,
    WhoamiResponse,
)

from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.keys import Key
from reconciler.matrix import format as fmt
from reconciler.matrix.commands import CommandRunner, is_command
from reconciler.matrix.delivery import Deliverer, SendError
from reconciler.matrix.metrics import MatrixMetrics
from reconciler.matrix.notifier import TOPIC, Notifier, Outgoing
from reconciler.settings import MatrixSettings, Settings
from reconciler.store import OutboxMessage, Store

log = structlog.get_logger(__name__)

SYNC_TOKEN_META = "matrix:sync_token"
ENCRYPTION = "m.room.encryption"
_NETWORK_ERRORS = (ClientError, TimeoutError, asyncio.TimeoutError, OSError)


FAILPOINT_ENV = "FLEET_FAILPOINT"


def failpoint_after_send(
    env: Mapping[str, str] | None = None,
) -> Callable[[OutboxMessage, str], None] | None:
    """The crash test's hook: with ``FLEET_FAILPOINT=matrix.after_send`` in the environment,
    the process kills itself (SIGKILL) right after the homeserver accepted a message and
    before the delivery is recorded — the window a restart must not duplicate.
    ``matrix.after_send:N`` does so after this process's Nth accepted send instead of its
    first. None (no hook) otherwise; a malformed value is refused."""
    source = os.environ if env is None else env
    value = source.get(FAILPOINT_ENV, "")
    name, _, count = value.partition(":")
    if name != "matrix.after_send":
        return None
    if count and not (count.isdigit() and int(count) >= 1):
        raise ValueError(f"{FAILPOINT_ENV}={value!r}: the count after ':' must be 1 or more")
    remaining = [int(count or 1)]

    def kill(message: OutboxMessage, event_id: str) -> None:
        remaining[0] -= 1
        if remaining[0] > 0:
            return
        log.warning("matrix.failpoint", message=message.id, event_id=event_id)
        os.kill(os.getpid(), signal.SIGKILL)

    return kill


class SetupError(Exception):
    """The Matrix set-up is wrong or unreachable; the message says what to fix."""


@dataclass(frozen=True)
class MatrixStatus:
    ok: bool
    detail: str


def _http_status(response: ErrorResponse) -> int:
    transport = getattr(response, "transport_response", None)
    return int(getattr(transport, "status", 0) or 0)


class MatrixService:
    """One process's Matrix client thread; see the module docstring."""

    def __init__(
        self,
        store: Store,
        gateway: ForgejoGateway,
        *,
        settings: Callable[[], Settings],
        clock: Callable[[], datetime],
        enqueue: Callable[[Key], None],
        metrics: MatrixMetrics | None = None,
        after_send: Callable[[OutboxMessage, str], None] | None = None,
    ) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock
        self._metrics = metrics
        self.notifier = Notifier(store, settings=settings, clock=clock)
        self.commands = CommandRunner(
            gateway, store, settings=settings, clock=clock, enqueue=enqueue
        )
        self._after_send = after_send
        self._status = MatrixStatus(False, "not started")
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self.room_id: str | None = None
        self._refused: str | None = None  # why nothing more may be posted in the room
        self._started_at = clock()
        if metrics is not None:
            metrics.bind_depth(lambda: float(len(store.pending(topic=TOPIC))))

    @property
    def config(self) -> MatrixSettings:
        return self._settings().matrix

    def status(self) -> MatrixStatus:
        return self._status

    def idle(self) -> bool:
        """Everything that happened so far is delivered: no event left to announce, no
        message left in the outbox."""
        return not self.notifier.behind() and not self._store.pending(topic=TOPIC, limit=1)

    def _set_status(self, ok: bool, detail: str) -> None:
        if ok and self._refused is not None:
            ok, detail = False, self._refused
        if self._status != MatrixStatus(ok, detail):
            (log.info if ok else log.warning)("matrix.status", ok=ok, detail=detail)
        self._status = MatrixStatus(ok, detail)

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._started_at = self._clock()
        self.notifier.start_from_now()
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(started,), name="matrix", daemon=True
        )
        self._thread.start()
        started.wait(timeout=10)

    def _run(self, started: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        started.set()
        try:
            loop.run_until_complete(self._main())
        except Exception as exc:  # noqa: BLE001 -- the thread must never take the process down
            log.error("matrix.crashed", error=repr(exc))
            self._set_status(False, f"the Matrix thread stopped: {exc!r}")
        finally:
            loop.close()

    def stop(self, timeout: float = 10.0) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # the loop closed meanwhile
                pass
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def wake(self) -> None:
        """Look at the event log and the outbox now rather than at the next poll."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:
                pass

    async def _sleep(self, seconds: float, *, wakeable: bool = False) -> None:
        assert self._stop is not None and self._wake is not None
        waits = [asyncio.ensure_future(self._stop.wait())]
        if wakeable:
            waits.append(asyncio.ensure_future(self._wake.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Also when this sleep is itself cancelled (at stop): no waiter is left behind.
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        if wakeable:
            self._wake.clear()

    async def _main(self) -> None:
        assert self._stop is not None
        config = self.config
        assert config.homeserver and config.user_id and config.access_token and config.room_id
        client = AsyncClient(
            config.homeserver,
            config.user_id,
            config=AsyncClientConfig(max_limit_exceeded=0, max_timeouts=0, request_timeout=30),
        )
        client.access_token = config.access_token.get_secret_value()
        try:
            backoff = config.retry_initial
            while not self._stop.is_set():
                try:
                    await self._connect(client)
                    break
                except SetupError as exc:
                    self._set_status(False, str(exc))
                except _NETWORK_ERRORS as exc:
                    self._set_status(False, f"homeserver {config.homeserver} unreachable: {exc}")
                await self._sleep(backoff)
                backoff = min(backoff * 2, config.retry_max)
            if self._stop.is_set():
                return
            tasks = [
                asyncio.ensure_future(self._deliver_forever(client)),
                asyncio.ensure_future(self._sync_forever(client)),
            ]
            await self._stop.wait()
            for task in tasks:
                task.cancel()
            for outcome in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(outcome, Exception):
                    log.error("matrix.task_failed", error=repr(outcome), exc_info=outcome)
        finally:
            await client.close()

    async def _connect(self, client: AsyncClient) -> None:
        config = self.config
        who = await client.whoami()
        if not isinstance(who, WhoamiResponse):
            if _http_status(who) == 401 or who.status_code == "M_UNKNOWN_TOKEN":
                raise SetupError(
                    f"the Matrix access token is not valid ({who}): create a new one for "
                    f"{config.user_id} (docs/matrix.md) and set matrix.access_token"
                )
            raise SetupError(f"the homeserver refused whoami: {who}")
        if who.user_id != config.user_id:
            raise SetupError(
                f"the access token belongs to {who.user_id}, not matrix.user_id {config.user_id}"
            )
        client.user_id = who.user_id
        client.device_id = who.device_id or ""
        if client.device_id:
            # The token's device keeps its id (the transaction ids depend on it); only its
            # display name is ours to set, so people can tell the bot's session apart.
            named = await client.update_device(
                client.device_id, {"display_name": config.device_name}
            )
            if not isinstance(named, UpdateDeviceResponse):
                log.warning("matrix.device_name_refused", error=str(named))
        room = config.room_id
        assert room is not None
        if room.startswith("#"):
            resolved = await client.room_resolve_alias(room)
            if not isinstance(resolved, RoomResolveAliasResponse):
                raise SetupError(f"the room alias {room} is unknown to the homeserver: {resolved}")
            room = resolved.room_id
        joined = await client.join(room)
        if not isinstance(joined, JoinResponse):
            raise SetupError(
                f"cannot join the room {config.room_id} ({joined}): check the room id and "
                "invite the bot"
            )
        encryption = await client.room_get_state_event(room, ENCRYPTION)
        if isinstance(encryption, RoomGetStateEventResponse) and encryption.content:
            raise SetupError(
                f"the room {config.room_id} is encrypted; agent-fleet supports unencrypted rooms "
                "only — use a room without encryption"
            )
        self.room_id = room
        self._set_status(True, f"connected to {room} as {who.user_id}")

    # --- delivery -------------------------------------------------------------------------

    async def _send(self, client: AsyncClient, content: dict[str, Any], txn_id: str) -> str:
        assert self.room_id is not None
        try:
            response = await client.room_send(self.room_id, "m.room.message", content, tx_id=txn_id)
        except _NETWORK_ERRORS as exc:
            raise SendError(f"homeserver unreachable: {exc!r}") from exc
        if isinstance(response, RoomSendResponse):
            return str(response.event_id)
        assert isinstance(response, ErrorResponse)
        status = _http_status(response)
        if status == 429 or response.status_code == "M_LIMIT_EXCEEDED":
            raise SendError(str(response), retry_after=(response.retry_after_ms or 1000) / 1000)
        if status in (400, 413) and response.status_code not in ("M_FORBIDDEN", "M_UNKNOWN_TOKEN"):
            raise SendError(str(response), permanent=True)
        raise SendError(f"the homeserver answered {status or '?'}: {response}")

    async def _deliver_forever(self, client: AsyncClient) -> None:
        config = self.config
        deliverer = Deliverer(
            self._store,
            lambda content, txn_id: self._send(client, content, txn_id),
            on_result=self._metrics.count_delivery if self._metrics else (lambda result: None),
            after_send=self._after_send or (lambda message, event_id: None),
        )
        backoff = config.retry_initial
        assert self._stop is not None
        while not self._stop.is_set():
            wait = self.config.poll_interval
            try:
                self.notifier.scan()
                if self._refused is not None:
                    # Never post in plain text into a room that became encrypted: the
                    # messages wait in the outbox.
                    self._set_status(False, self._refused)
                    await self._sleep(wait, wakeable=True)
                    continue
                result = await deliverer.drain()
            except Exception as exc:  # noqa: BLE001 -- a store or format error must not kill the thread
                log.error("matrix.deliver_failed", error=repr(exc))
                self._set_status(False, f"delivering failed: {exc!r}")
                await self._sleep(backoff)
                backoff = min(backoff * 2, config.retry_max)
                continue
            if result.retry_after is None:
                backoff = config.retry_initial
                self._set_status(True, f"connected to {self.room_id}")
            else:
                self._set_status(False, f"{deliverer.depth()} messages waiting: {result.error}")
                if result.retry_after > 0:  # 429: the homeserver said how long
                    wait = result.retry_after
                else:
                    wait = backoff
                    backoff = min(backoff * 2, config.retry_max)
            await self._sleep(wait, wakeable=result.retry_after is None)

    # --- commands -------------------------------------------------------------------------

    def _sync_filter(self) -> dict[str, Any]:
        return {
            "room": {
                "rooms": [self.room_id],
                "timeline": {"limit": 100, "types": ["m.room.message", ENCRYPTION]},
                "state": {"lazy_load_members": True, "types": [ENCRYPTION]},
                "ephemeral": {"types": []},
                "account_data": {"types": []},
            },
            "presence": {"types": []},
            "account_data": {"types": []},
        }

    async def _sync_forever(self, client: AsyncClient) -> None:
        assert self._stop is not None
        config = self.config
        since = self._store.get_meta(SYNC_TOKEN_META)
        started_ms = int(self._started_at.timestamp() * 1000)
        backoff = config.retry_initial
        while not self._stop.is_set():
            first = not isinstance(since, str)
            try:
                response = await client.sync(
                    timeout=0 if first else int(self.config.sync_timeout * 1000),
                    sync_filter=self._sync_filter(),
                    since=since if isinstance(since, str) else None,
                )
            except _NETWORK_ERRORS as exc:
                log.info("matrix.sync_failed", error=repr(exc))
                await self._sleep(backoff)
                backoff = min(backoff * 2, config.retry_max)
                continue
            if not isinstance(response, SyncResponse):
                log.warning("matrix.sync_refused", error=str(response))
                await self._sleep(backoff)
                backoff = min(backoff * 2, config.retry_max)
                continue
            backoff = config.retry_initial
            room = response.rooms.join.get(self.room_id or "")
            if room is not None and self._encrypted_now(room):
                self._refused = (
                    f"the room {config.room_id} was encrypted while agent-fleet was running; "
                    "agent-fleet supports unencrypted rooms only, so nothing more is posted "
                    "there (messages wait in the outbox) — use a room without encryption"
                )
                self._set_status(False, self._refused)
            for event in room.timeline.events if room else []:
                # The very first sync returns history: only what was sent since we started.
                if first and int(event.source.get("origin_server_ts", 0)) < started_ms:
                    continue
                try:
                    await self._handle(event.source)
                except Exception as exc:  # noqa: BLE001 -- one bad command must not stop the sync
                    log.error(
                        "matrix.command_failed",
                        event_id=event.source.get("event_id"),
                        error=repr(exc),
                    )
            since = response.next_batch
            self._store.set_meta(SYNC_TOKEN_META, since)

    @staticmethod
    def _encrypted_now(room: Any) -> bool:
        """Whether this sync shows the room's encryption being turned on."""
        events = [*room.state, *room.timeline.events]
        return any(event.source.get("type") == ENCRYPTION for event in events)

    async def _handle(self, source: dict[str, Any]) -> None:
        if source.get("type") != "m.room.message":
            return
        sender = source.get("sender")
        event_id = source.get("event_id")
        content = source.get("content")
        if not isinstance(sender, str) or not isinstance(event_id, str):
            return
        if sender == self.config.user_id or not isinstance(content, dict):
            return
        body = content.get("body")
        relates = content.get("m.relates_to")
        relation = relates if isinstance(relates, dict) else {}
        if not isinstance(body, str) or not is_command(body):
            return
        if relation.get("rel_type") == "m.replace":
            return  # an edit of a command is not a new command
        root = event_id
        if relation.get("rel_type") == "m.thread" and isinstance(relation.get("event_id"), str):
            root = relation["event_id"]
        outcome = await asyncio.to_thread(self.commands.run, sender, body, event_id=event_id)
        log.info("matrix.command", sender=sender, command=outcome.name, outcome=outcome.outcome)
        if self._metrics is not None:
            self._metrics.count_command(outcome.name, outcome.outcome)
        answer = Outgoing(
            f"answer-{event_id}", "reply", fmt.answer(outcome.lines), thread_event=root
        )
        self._store.enqueue(TOPIC, answer.payload(), now=self._clock(), message_id=answer.id)
        assert self._wake is not None
        self._wake.set()
