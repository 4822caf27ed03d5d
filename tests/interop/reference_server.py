"""Serves a feed with the Python reference implementation of ZeroEventHub.

The feed is the reference package's own FastAPI handler
(``ZeroEventHubFastApiHandler``) mounted at ``/feed/v1`` and run under
uvicorn, so what a client reads is exactly what the reference serves. Only the
data behind it (a ``DataReader``) is ours, chosen by the ``scenario`` argument:

``standard``
    The standard workload of PROTOCOL.md over 2 partitions, ``--events``
    events in each: each event is followed by a checkpoint whose cursor is
    its index in its partition, and reading from cursor ``"i"`` continues at
    index ``i + 1``. Events carry headers (two of every three), sent only when
    the request selects them.
``edge``
    The edge data set of ``edge_events.json`` (unicode, escapes, numbers at
    the edges of i64/u64/f64, a 200 KB event, cursors holding ``&``, ``=``,
    ``%``, ``+``, space and ``/``).
``failing``
    The standard workload, but the reader raises after ``--fail-after``
    events, once their lines are sent: a failure in the middle of the body.

With every scenario, ``_first`` reads from the start of a partition, ``_last``
answers a checkpoint at its current end, a cursor the scenario never handed
out is answered with 400, and a page holds at most ``pagesizehint`` events
(``--default-page-size`` without one), taken from the requested partitions in
turn.

Usage::

    python reference_server.py PORT SCENARIO [--events N] [--fail-after K] [--log-requests]

With ``--log-requests``, every request to the feed is logged on standard
error as one line, ``REQUEST <query>``, before it is answered (so that a test
can count what a client asked).

``PORT`` 0 picks a free port. Once the server listens, it prints one line on
standard output, ``READY <port>``, and serves until killed (or, with
``--stop-on-stdin-eof``, until its standard input closes, so that it never
outlives the process that started it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import sys
import threading
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException, Request, status
from fastapi.responses import StreamingResponse
from zeroeventhub import FIRST_CURSOR, LAST_CURSOR, Cursor, ZeroEventHubFastApiHandler

PARTITIONS = 2
EDGE_EVENTS = Path(__file__).with_name("edge_events.json")
ALL_HEADERS = "_all"


@dataclass(frozen=True)
class StoredEvent:
    """One event of a partition, as the data reader stores it."""

    headers: dict[str, str]
    data: Any


@dataclass(frozen=True)
class Feed:
    """The events of every partition, and how cursors name positions."""

    partitions: list[list[StoredEvent]]
    cursor_prefix: str = ""

    def cursor_of(self, index: int) -> str:
        """The cursor of the event at ``index`` of its partition."""
        return f"{self.cursor_prefix}{index}"

    def index_of(self, cursor: str) -> int | None:
        """The index a cursor names, or None when the feed never handed it out."""
        if not cursor.startswith(self.cursor_prefix):
            return None
        digits = cursor[len(self.cursor_prefix) :]
        if not re.fullmatch(r"0|[1-9][0-9]*", digits):
            return None
        return int(digits)


def standard_event(partition: int, index: int) -> StoredEvent:
    """The event at ``index`` of ``partition`` in the standard workload.

    The Rust tests build the same events (``zeroeventhub::workload`` has the
    data); keep the two in step.
    """
    headers = {} if index % 3 == 2 else {"tenant": "acme", "trace": f"{partition}-{index}"}
    data = {
        "id": f"{partition:08x}-0000-4000-8000-{index:012x}",
        "type": "PersonNameChanged",
        "when": "2023-09-26T11:23:30.472906Z",
        "person_id": index,
        "new_name": {"first_name": "Fred", "surname": "Bloggs"},
    }
    return StoredEvent(headers, data)


def standard_feed(events: int) -> Feed:
    """The standard workload with ``events`` events in each partition."""
    return Feed(
        [[standard_event(partition, index) for index in range(events)] for partition in range(PARTITIONS)]
    )


def edge_feed() -> Feed:
    """The edge data set described in ``edge_events.json``."""
    spec = json.loads(EDGE_EVENTS.read_text(encoding="utf-8"))
    partitions: list[list[StoredEvent]] = [[] for _ in range(spec["partitions"])]
    for event in spec["events"]:
        partitions[event["partition"]].append(StoredEvent(event["headers"], event["data"]))
    large = spec["large_event"]
    blob = large["blob_unit"] * large["blob_units"]
    partitions[large["partition"]].append(
        StoredEvent(large["headers"], {"kind": "large", "blob": blob})
    )
    return Feed(partitions, spec["cursor_prefix"])


def select_headers(headers: dict[str, str], wanted: Sequence[str] | None) -> dict[str, str]:
    """The headers of an event that a request selected."""
    if not wanted:
        return {}
    if ALL_HEADERS in wanted:
        return dict(headers)
    return {name: value for name, value in headers.items() if name in wanted}


class ScenarioReader:
    """A ``DataReader`` for the reference handler over a ``Feed``."""

    def __init__(self, feed: Feed, default_page_size: int, fail_after: int | None) -> None:
        self.feed = feed
        self.default_page_size = default_page_size
        self.fail_after = fail_after

    def get_data(
        self,
        cursors: Sequence[Cursor],
        headers: Sequence[str] | None,
        page_size: int | None,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Checks the cursors now (so a bad one is a 400, not a broken body)
        and returns the page's lines as a generator."""
        starts: list[tuple[int, int]] = []
        at_end: list[tuple[int, int]] = []
        for cursor in cursors:
            partition = cursor.partition_id
            length = len(self.feed.partitions[partition])
            if cursor.cursor == FIRST_CURSOR:
                starts.append((partition, 0))
            elif cursor.cursor == LAST_CURSOR:
                if length > 0:
                    at_end.append((partition, length - 1))
            else:
                index = self.feed.index_of(cursor.cursor)
                if index is None:
                    raise HTTPException(
                        status_code=status.HTTP_400_BAD_REQUEST,
                        detail=f"cursor{partition}: not a cursor of this feed",
                    )
                starts.append((partition, index + 1))
        budget = page_size if page_size and page_size > 0 else self.default_page_size
        return self._lines(starts, at_end, headers, budget)

    async def _lines(
        self,
        starts: list[tuple[int, int]],
        at_end: list[tuple[int, int]],
        headers: Sequence[str] | None,
        budget: int,
    ) -> AsyncGenerator[dict[str, Any], None]:
        for partition, index in at_end:
            yield {"partition": partition, "cursor": self.feed.cursor_of(index)}
        positions = dict(starts)
        sent = 0
        while sent < budget:
            progressed = False
            for partition, index in positions.items():
                if sent >= budget or index >= len(self.feed.partitions[partition]):
                    continue
                event = self.feed.partitions[partition][index]
                line: dict[str, Any] = {"partition": partition}
                selected = select_headers(event.headers, headers)
                if selected:
                    line["headers"] = selected
                line["data"] = event.data
                yield line
                yield {"partition": partition, "cursor": self.feed.cursor_of(index)}
                positions[partition] = index + 1
                sent += 1
                progressed = True
                if self.fail_after is not None and sent >= self.fail_after:
                    raise RuntimeError("the data reader failed in the middle of a page")
            if not progressed:
                return


def build_app(reader: ScenarioReader, log_requests: bool) -> FastAPI:
    """A FastAPI app with the reference handler at ``/feed/v1``."""
    app = FastAPI()
    handler = ZeroEventHubFastApiHandler(data_reader=reader, server_partition_count=PARTITIONS)

    @app.get("/feed/v1")
    async def feed(request: Request) -> StreamingResponse:
        if log_requests:
            print(f"REQUEST {request.url.query}", file=sys.stderr, flush=True)
        return handler.handle(request)

    return app


def build_reader(scenario: str, events: int, fail_after: int, default_page_size: int) -> ScenarioReader:
    """The data reader of a named scenario."""
    scenarios: dict[str, Callable[[], ScenarioReader]] = {
        "standard": lambda: ScenarioReader(standard_feed(events), default_page_size, None),
        "edge": lambda: ScenarioReader(edge_feed(), default_page_size, None),
        "failing": lambda: ScenarioReader(standard_feed(events), default_page_size, fail_after),
    }
    return scenarios[scenario]()


async def serve(app: FastAPI, port: int) -> None:
    """Listens on 127.0.0.1, says so on standard output, and serves."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    config = uvicorn.Config(
        app, http="h11", lifespan="off", log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped before it started")
        await asyncio.sleep(0.01)
    print(f"READY {sock.getsockname()[1]}", flush=True)
    await task


def exit_when_stdin_closes() -> None:
    """Ends the process once standard input reaches its end."""
    while sys.stdin.buffer.read(4096):
        pass
    os._exit(0)


def main() -> None:
    """Parses the command line and serves."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("port", type=int, help="port on 127.0.0.1; 0 picks a free one")
    parser.add_argument("scenario", choices=["standard", "edge", "failing"])
    parser.add_argument("--events", type=int, default=10, help="events in each partition of the standard workload")
    parser.add_argument("--fail-after", type=int, default=3, help="events before the failure")
    parser.add_argument("--default-page-size", type=int, default=1000)
    parser.add_argument("--stop-on-stdin-eof", action="store_true")
    parser.add_argument("--log-requests", action="store_true")
    args = parser.parse_args()
    reader = build_reader(args.scenario, args.events, args.fail_after, args.default_page_size)
    if args.stop_on_stdin_eof:
        threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
    asyncio.run(serve(build_app(reader, args.log_requests), args.port))


if __name__ == "__main__":
    main()
