"""Responsiveness of `ktrace open` on a large capture: time to the first screen with data,
keypress-to-screen latency while indexing runs, and after.

    python -m tests.bench.tui [CAPTURE]      (default: bench-data/bench.pcap)
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

from ktrace.perf import tune_process
from ktrace.tui.app import KtraceApp
from tests.bench.run import DEFAULT

VIEW = {"1": "PointsView", "2": "FlowsView", "3": "PacketsView"}


async def switch(app: KtraceApp, key: str) -> float:
    """Seconds from a key reaching the app to its view being on screen (polled every 2 ms;
    the pilot's own waits are for the app to go idle, which indexing never lets it)."""
    start = time.perf_counter()
    app.simulate_key(key)
    while type(app.screen).__name__ != VIEW[key]:
        await asyncio.sleep(0.002)
    await asyncio.sleep(0)  # let it paint
    return time.perf_counter() - start


async def measure(path: Path) -> None:
    app = KtraceApp([path])
    start = time.perf_counter()
    async with app.run_test(size=(140, 40)) as pilot:
        while app.progress is None:
            await pilot.pause(0.005)
        first = time.perf_counter() - start
        during = []
        for key in "2131" * 3:
            if app.phase != "indexing":
                break
            during.append(await switch(app, key))
        await app.workers.wait_for_complete()
        indexed = time.perf_counter() - start
        after = [await switch(app, key) for key in "3213" * 3]
        scroll = []
        await pilot.press("3")
        for _ in range(20):
            t = time.perf_counter()
            await pilot.press("pagedown")
            scroll.append(time.perf_counter() - t)
    print(f"capture: {path} ({len(app.index or []):,} packets)")
    print(f"first screen with live counts: {first * 1000:.0f} ms")
    if during:
        print(
            f"keypress -> new view while indexing: median {statistics.median(during) * 1000:.0f}"
            f" ms, max {max(during) * 1000:.0f} ms ({len(during)} keys)"
        )
    print(f"indexed and analysed: {indexed:.1f} s")
    print(
        f"keypress -> new view after: median {statistics.median(after) * 1000:.0f} ms, "
        f"max {max(after) * 1000:.0f} ms"
    )
    print(
        f"page down in the packet list: median {statistics.median(scroll) * 1000:.0f} ms, "
        f"max {max(scroll) * 1000:.0f} ms"
    )


if __name__ == "__main__":
    tune_process()
    asyncio.run(measure(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT))
