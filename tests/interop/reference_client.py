"""Reads a feed with the Python reference client of ZeroEventHub and prints
what it received as JSON, for a test in another language to compare.

One request from the command line::

    python reference_client.py URL --partitions N --cursor P VALUE [--cursor P VALUE ...]
        [--page-size-hint K] [--header NAME ...]

or many, one JSON object per line on standard input, each answered as soon
as its line is read (so that one interpreter start serves a whole test, and a
caller can base a request on the answer to the previous one)::

    python reference_client.py --batch < requests.jsonl

where each request is
``{"url": ..., "partitions": N, "cursors": [[P, VALUE], ...],
"page_size_hint": K or null, "headers": [NAME, ...] or null}``.

For each request, one line of JSON is printed::

    {"items": [ITEM, ...], "outcome": OUTCOME}

An ITEM is what the reference client yielded, in order:
``{"type": "event", "partition": P, "headers": {...} or null, "data": ...}``
or ``{"type": "checkpoint", "partition": P, "cursor": "..."}``. The OUTCOME
says how the page ended:

- ``{"kind": "complete"}``: the body ended cleanly;
- ``{"kind": "status", "status": 400, "body": "..."}``: a non-2xx answer;
- ``{"kind": "broken_body", "error": TYPE, "message": ...}``: the connection
  failed after the response head arrived (a truncated or aborted body);
- ``{"kind": "decode", "error": TYPE, "message": ...}``: a line the reference
  client could not parse;
- ``{"kind": "transport", "error": TYPE, "message": ...}``: no response at all.

The exit code is 0 when every request completed, and otherwise that of the
first one that did not: 2 status, 3 broken body, 4 decode, 5 transport. So a
failure is never mistaken for a clean page, whichever the caller reads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import httpx
from zeroeventhub import Client, Cursor, Event

EXIT_CODES = {"complete": 0, "status": 2, "broken_body": 3, "decode": 4, "transport": 5}
TIMEOUT_SECONDS = 30.0


def item_to_json(item: Event | Cursor) -> dict[str, Any]:
    """An event or checkpoint from the reference client, as plain JSON."""
    if isinstance(item, Cursor):
        return {"type": "checkpoint", "partition": item.partition_id, "cursor": item.cursor}
    return {
        "type": "event",
        "partition": item.partition_id,
        "headers": item.headers,
        "data": item.data,
    }


def error_outcome(kind: str, error: BaseException) -> dict[str, Any]:
    """An outcome naming an exception's type and message."""
    return {"kind": kind, "error": type(error).__name__, "message": str(error)}


async def fetch(request: dict[str, Any]) -> dict[str, Any]:
    """Runs one request through the reference client."""
    head_arrived = False

    async def on_response(response: httpx.Response) -> None:
        nonlocal head_arrived
        head_arrived = True
        if response.is_error:
            # The reference client raises before reading an error's body;
            # read it here so that it can be reported.
            await response.aread()

    items: list[dict[str, Any]] = []
    async with httpx.AsyncClient(
        timeout=TIMEOUT_SECONDS, event_hooks={"response": [on_response]}
    ) as http_client:
        client = Client(request["url"], request["partitions"], http_client)
        cursors = [Cursor(int(partition), value) for partition, value in request["cursors"]]
        try:
            async for item in client.fetch_events(
                cursors, request.get("page_size_hint"), request.get("headers")
            ):
                items.append(item_to_json(item))
        except httpx.HTTPStatusError as error:
            outcome = {
                "kind": "status",
                "status": error.response.status_code,
                "body": error.response.text,
            }
        except httpx.TransportError as error:
            outcome = error_outcome("broken_body" if head_arrived else "transport", error)
        except ValueError as error:
            outcome = error_outcome("decode", error)
        else:
            outcome = {"kind": "complete"}
    return {"items": items, "outcome": outcome}


def stdin_requests() -> Iterator[dict[str, Any]]:
    """The requests on standard input, each as soon as its line arrives."""
    while line := sys.stdin.readline():
        if line.strip():
            yield json.loads(line)


async def run(requests: Iterable[dict[str, Any]]) -> int:
    """Runs the requests in order, printing each result; returns the exit code."""
    exit_code = 0
    for request in requests:
        result = await fetch(request)
        print(json.dumps(result), flush=True)
        if exit_code == 0:
            exit_code = EXIT_CODES[result["outcome"]["kind"]]
    return exit_code


def parse_args() -> Iterable[dict[str, Any]]:
    """The requests asked for on the command line or on standard input."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", nargs="?", help="the feed's URL")
    parser.add_argument("--batch", action="store_true", help="read requests from stdin")
    parser.add_argument("--partitions", type=int, help="the feed's partition count")
    parser.add_argument(
        "--cursor", nargs=2, action="append", metavar=("P", "VALUE"), default=[]
    )
    parser.add_argument("--page-size-hint", type=int)
    parser.add_argument("--header", action="append", dest="headers")
    args = parser.parse_args()
    if args.batch:
        if args.url is not None:
            parser.error("--batch takes its requests from standard input, not a URL")
        return stdin_requests()
    if args.url is None or args.partitions is None:
        parser.error("a URL and --partitions are required")
    return [
        {
            "url": args.url,
            "partitions": args.partitions,
            "cursors": args.cursor,
            "page_size_hint": args.page_size_hint,
            "headers": args.headers,
        }
    ]


def main() -> None:
    """Reads the requests, runs them and exits with the outcome's code."""
    sys.exit(asyncio.run(run(parse_args())))


if __name__ == "__main__":
    main()
