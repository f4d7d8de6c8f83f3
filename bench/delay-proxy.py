#!/usr/bin/python3
"""A TCP proxy that delays every byte by a fixed time in each direction: a back end on the far
side of a network, for the one machine the benchmarks run on (no netem here).

    bench/delay-proxy.py LISTEN_PORT TARGET_PORT DELAY_MS

Each chunk read is written DELAY_MS later, in order, without holding back the chunks behind it
(a wire, not a store-and-forward hop). asyncio's timers are coarse (about a millisecond), so
the delay is a floor, not exact: bench/early-data.py reports the round trip it measured.
"""
import asyncio, sys, time

LISTEN, TARGET, DELAY = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) / 1000


async def pipe(reader, writer):
    queue = asyncio.Queue()

    async def send():
        while True:
            due, data = await queue.get()
            if data is None:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()

    sender = asyncio.create_task(send())
    try:
        while data := await reader.read(65536):
            queue.put_nowait((time.monotonic() + DELAY, data))
    except ConnectionError:
        pass
    queue.put_nowait((0, None))
    try:
        await sender
    except ConnectionError:
        pass


async def serve(client_reader, client_writer):
    try:
        server_reader, server_writer = await asyncio.open_connection('127.0.0.1', TARGET)
    except OSError:
        client_writer.close()
        return
    for sock in (client_writer, server_writer):
        sock.get_extra_info('socket').setsockopt(6, 1, 1)  # TCP_NODELAY
    await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))


async def main():
    server = await asyncio.start_server(serve, '127.0.0.1', LISTEN)
    async with server:
        await server.serve_forever()


asyncio.run(main())
