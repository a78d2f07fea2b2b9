#!/usr/bin/env python3
"""Idle WebSocket memory: open N WebSockets through moat (release build) to a local echo
upstream, keep them idle, and report moat's resident memory (VmRSS) before and after.

Usage: loadtest/ws_idle.py [N=10000] [--moat target/release/moat]
       loadtest/ws_idle.py [N] --bare target/release/examples/bare_proxy   (the floor)
Everything runs on 127.0.0.1 and stops by itself (bounded: 120 s)."""
import asyncio, base64, hashlib, os, shutil, socket, subprocess, sys, tempfile, time

N = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 10000
MOAT = sys.argv[sys.argv.index("--moat") + 1] if "--moat" in sys.argv else "target/release/moat"
BARE = sys.argv[sys.argv.index("--bare") + 1] if "--bare" in sys.argv else None
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC11B65"


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def upstream(reader, writer):
    key = ""
    while True:
        line = await reader.readline()
        if not line or line in (b"\r\n", b"\n"):
            break
        if line.lower().startswith(b"sec-websocket-key:"):
            key = line.split(b":", 1)[1].strip().decode()
    accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    writer.write(f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n".encode())
    await writer.drain()
    await reader.read()  # idle until closed


async def client(port, opened):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    await w.drain()
    status = await r.readline()
    if b" 101 " in status:
        opened.append(w)
    else:
        w.close()


async def main():
    up_port, port, admin = free_port(), free_port(), free_port()
    server = await asyncio.start_server(upstream, "127.0.0.1", up_port, backlog=4096)
    d = tempfile.mkdtemp(prefix="moat-ws-idle-")
    cfg = os.path.join(d, "moat.yaml")
    with open(cfg, "w") as f:
        f.write(f"server: {{ threads: 1, pid_file: {d}/p.pid, upgrade_sock: {d}/u.sock }}\n"
                f"listeners: [{{ name: p, address: \"127.0.0.1:{port}\" }}]\n"
                f"admin: {{ address: \"127.0.0.1:{admin}\" }}\n"
                f"upstreams:\n  ws: {{ targets: [\"127.0.0.1:{up_port}\"] }}\n"
                f"routes:\n  - name: ws\n    match: {{ path: /ws }}\n    upstream: ws\n")
    cmd = ([BARE, "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{up_port}", "--threads", "1"]
           if BARE else [MOAT, "run", "-c", cfg])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close(); break
            except OSError:
                await asyncio.sleep(0.1)
        before = rss_kib(proc.pid)
        opened = []
        start = time.time()
        for i in range(0, N, 500):
            await asyncio.wait_for(asyncio.gather(*(client(port, opened) for _ in range(min(500, N - i)))), 60)
        await asyncio.sleep(2)
        after = rss_kib(proc.pid)
        print(f"idle websockets: {len(opened)} of {N} open in {time.time() - start:.1f} s")
        print(f"{'bare' if BARE else 'moat'} RSS: {before / 1024:.1f} MiB before, {after / 1024:.1f} MiB with them open "
              f"({(after - before) / max(len(opened), 1):.1f} KiB per connection)")
        for w in opened:
            w.close()
    finally:
        proc.kill(); proc.wait(); server.close(); shutil.rmtree(d, ignore_errors=True)


asyncio.run(asyncio.wait_for(main(), 120))
