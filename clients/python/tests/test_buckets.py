"""The control plane lists and watches the router's buckets with nats-py (issue 22: keys() and watch()
need `$JS.API.CONSUMER.INFO.KV_<bucket>.>`, which the control plane's user lacked)."""

import asyncio

import nats
import nats.js.errors

from conftest import run_worker


def test_control_plane_lists_and_watches_fleet_health(fleet):
    async def main():
        stop = asyncio.Event()
        worker = asyncio.ensure_future(run_worker(fleet["url"], fleet["pw"]["worker-01"], "worker-01", "kg-writer", stop))
        nc = await nats.connect(fleet["url"], user="control-01", password=fleet["pw"]["control-01"],
                                inbox_prefix="_INBOX.control-01")
        try:
            js = nc.jetstream()
            nodes = await js.key_value("fleet-nodes")
            assert sorted(await nodes.keys()) == ["control-01", "worker-01", "worker-02"]
            # The router creates fleet-health when it starts: wait for it, bounded.
            loop = asyncio.get_running_loop()
            until = loop.time() + 15
            while True:
                try:
                    health = await js.key_value("fleet-health")
                    break
                except nats.js.errors.BucketNotFoundError:
                    assert loop.time() < until, "the router never created fleet-health"
                    await asyncio.sleep(0.1)
            watcher = await health.watch("worker-01")
            async def first_healthy():
                async for entry in watcher:
                    if entry is not None and entry.value and b'"state":"healthy"' in entry.value:
                        return entry
            healthy = await asyncio.wait_for(first_healthy(), 15)
            assert healthy.key == "worker-01"
            await watcher.stop()
        finally:
            await nc.close()
            stop.set()
            await worker

    asyncio.run(main())
