"""Reads a feed with the Python reference client, as the end-to-end benchmark
reads it with ours, and prints what it measured as one line of JSON.

    python reference_consume.py URL --partition P --events N --page-size K

It reads partition P from ``_first``, page after page (each from the last
checkpoint of the previous one), until N events have arrived, and prints
``{"events": .., "seconds": .., "cpu_seconds": .., "peak_rss_kb": ..}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time

import httpx
from zeroeventhub import Client, Cursor


async def consume(url: str, partition: int, events: int, page_size: int) -> dict[str, float]:
    """Reads ``events`` events of ``partition`` and times it."""
    async with httpx.AsyncClient(timeout=60.0) as http:
        client = Client(url, 2, http)
        # One small page first, so that the connection is open before timing.
        async for _ in client.fetch_events([Cursor(partition, "_first")], 1):
            pass
        cursor = "_first"
        received = 0
        wall = time.perf_counter()
        cpu = time.process_time()
        while received < events:
            progressed = False
            async for item in client.fetch_events([Cursor(partition, cursor)], page_size):
                if isinstance(item, Cursor):
                    cursor = item.cursor
                    progressed = True
                else:
                    received += 1
            if not progressed:
                raise RuntimeError(f"the feed ran out after {received} events")
        return {
            "events": received,
            "seconds": time.perf_counter() - wall,
            "cpu_seconds": time.process_time() - cpu,
            "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        }


def main() -> None:
    """Parses the command line, reads, prints."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--partition", type=int, default=0)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--page-size", type=int, required=True)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(consume(args.url, args.partition, args.events, args.page_size))))


if __name__ == "__main__":
    main()
