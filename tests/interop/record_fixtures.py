"""Records the golden fixtures of ``tests/fixtures/python/`` from the Python
reference implementation.

Each case runs the reference ``Client`` against the reference
``ZeroEventHubFastApiHandler`` (the scenarios of ``reference_server.py``,
served by uvicorn on a loopback port) and writes down what went over the wire:
the request target the client sent, the response's status, content type and
body bytes, and what the client made of them. Run it with the Python of the
interop venv (``target/tmp/interop-venv/*/bin/python``) after changing a
scenario or the pinned versions, and commit the result::

    python tests/interop/record_fixtures.py
"""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from zeroeventhub import Client, Cursor

import reference_client
import reference_server

OUT = Path(__file__).resolve().parent.parent / "fixtures" / "python"
EDGE = json.loads(reference_server.EDGE_EVENTS.read_text(encoding="utf-8"))["cursor_prefix"]


@dataclass
class Case:
    """One request of the reference client to the reference server."""

    name: str
    scenario: str
    cursors: list[tuple[int, str]]
    partitions: int = 2
    page_size_hint: int | None = None
    headers: list[str] | None = None
    events: int = 3
    about: str = ""


CASES = [
    Case(
        "standard_both_first",
        "standard",
        [(0, "_first"), (1, "_first")],
        about="Both partitions from _first: no hint, no headers.",
    ),
    Case(
        "standard_stored_hint_headers",
        "standard",
        [(0, "0"), (1, "_first")],
        page_size_hint=3,
        headers=["trace", "tenant"],
        about="A stored cursor and _first, a page size hint, two headers by name.",
    ),
    Case(
        "standard_last_all_headers",
        "standard",
        [(0, "_last"), (1, "1")],
        headers=["_all"],
        about="_last on one partition, a stored cursor on the other, headers=_all.",
    ),
    Case(
        "edge_first",
        "edge",
        [(0, "_first"), (1, "_first")],
        page_size_hint=8,
        headers=["_all"],
        about="The edge data set (all but its 200 KB event and one more), every header.",
    ),
    Case(
        "edge_stored_cursors",
        "edge",
        [(0, f"{EDGE}1"), (1, f"{EDGE}0")],
        page_size_hint=2,
        about="Stored cursors holding &, =, %, +, space and /, percent-encoded by the client.",
    ),
    Case(
        "error_partition_count",
        "standard",
        [(0, "_first")],
        partitions=3,
        about="n=3 against a feed of 2 partitions: the reference's 400.",
    ),
    Case(
        "error_unknown_cursor",
        "standard",
        [(0, "nope")],
        about="A cursor the feed never handed out: a 400 from the data reader.",
    ),
]


async def record(case: Case, url: str) -> dict[str, Any]:
    """Runs one case and returns its manifest entry; writes its body file."""
    seen: dict[str, Any] = {}

    async def on_response(response: httpx.Response) -> None:
        await response.aread()
        seen["target"] = response.request.url.raw_path.decode("ascii")
        seen["status"] = response.status_code
        seen["content_type"] = response.headers.get("content-type")
        seen["body"] = response.content

    items: list[dict[str, Any]] = []
    async with httpx.AsyncClient(event_hooks={"response": [on_response]}) as http_client:
        client = Client(url, case.partitions, http_client)
        cursors = [Cursor(partition, cursor) for partition, cursor in case.cursors]
        try:
            async for item in client.fetch_events(cursors, case.page_size_hint, case.headers):
                items.append(reference_client.item_to_json(item))
            outcome: dict[str, Any] = {"kind": "complete"}
        except httpx.HTTPStatusError as error:
            outcome = {"kind": "status", "status": error.response.status_code}

    extension = "ndjson" if seen["status"] == 200 else "txt"
    body_file = f"{case.name}.{extension}"
    (OUT / body_file).write_bytes(seen["body"])
    return {
        "name": case.name,
        "about": case.about,
        "scenario": case.scenario,
        "request": {
            "partitions": case.partitions,
            "cursors": case.cursors,
            "page_size_hint": case.page_size_hint,
            "headers": case.headers,
        },
        "target": seen["target"],
        "status": seen["status"],
        "content_type": seen["content_type"],
        "body": body_file,
        "items": items,
        "outcome": outcome,
    }


async def serve_scenario(scenario: str, events: int) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    """Starts the reference server on a scenario; returns it and its feed URL."""
    reader = reference_server.build_reader(scenario, events, 0, 1000)
    app = reference_server.build_app(reader)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    config = uvicorn.Config(app, http="h11", lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    return server, task, f"http://127.0.0.1:{sock.getsockname()[1]}/feed/v1"


async def main() -> None:
    """Records every case into ``tests/fixtures/python/``."""
    OUT.mkdir(parents=True, exist_ok=True)
    entries = []
    for case in CASES:
        server, task, url = await serve_scenario(case.scenario, case.events)
        entries.append(await record(case, url))
        server.should_exit = True
        await task
    manifest = {
        "about": "Recorded from zeroeventhub 0.2.4 (reference Client and "
        "ZeroEventHubFastApiHandler under uvicorn) by tests/interop/record_fixtures.py; "
        "standard scenario with 3 events per partition.",
        "cases": entries,
    }
    (OUT / "cases.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    asyncio.run(main())
