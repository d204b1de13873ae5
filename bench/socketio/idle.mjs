// Per-connection memory of one chatmesh node (memory broker) holding N idle
// clients that each joined a room: native `/ws` clients, Socket.IO clients on
// WebSocket, or Socket.IO clients long-polling. One fresh node per mode; the
// node's RSS (from /proc) before the clients and after they settled.
//
//   (cd bench/socketio && npm ci)
//   node bench/socketio/idle.mjs --bin target/release/chatmesh --clients 5000 --modes native,sio-ws,sio-polling
//
// Prints one JSON line per mode and a markdown table.
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import net from "node:net";
import { io } from "socket.io-client";
import WebSocket from "ws";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith("--") ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const bin = args.bin || "target/release/chatmesh";
const clients = Number(args.clients || 2000);
const rooms = Number(args.rooms || Math.max(1, clients / 100));
const settleMs = Number(args.settle || 5000);
const modes = (args.modes || "native,sio-ws,sio-polling").split(",");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => { const { port } = srv.address(); srv.close(() => resolve(port)); });
  });
}
const rssKiB = (pid) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))[1]);

async function startNode() {
  const port = await freePort();
  const child = spawn(bin, [], {
    env: { ...process.env, CHATMESH_HTTP__LISTEN: `127.0.0.1:${port}`, CHATMESH_LIMITS__MAX_CONNECTIONS: "1000000",
      CHATMESH_LOG__LEVEL: "warn" },
    stdio: ["ignore", "ignore", "inherit"],
  });
  for (let i = 0; i < 200; i++) {
    try { if ((await fetch(`http://127.0.0.1:${port}/ready`)).ok) return { child, port }; } catch (_) { /* not yet */ }
    await sleep(50);
  }
  throw new Error("the node did not get ready");
}

function native(port, i) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws?user=u${i}`);
    ws.on("open", () => ws.send(JSON.stringify({ type: "join", room: `r${i % rooms}`, ref: 1 })));
    ws.on("message", (d) => { if (JSON.parse(d).type === "joined") resolve(ws); });
    ws.on("error", reject);
  });
}

function socketIo(port, i, transports) {
  return new Promise((resolve, reject) => {
    const s = io(`http://127.0.0.1:${port}`, { transports, forceNew: true, reconnection: false, auth: { user: `u${i}` } });
    s.on("connect", () => s.emit("join", `r${i % rooms}`, (r) => (r.ok ? resolve(s) : reject(new Error(r.error)))));
    s.on("connect_error", reject);
  });
}

const open = {
  native: (port, i) => native(port, i),
  "sio-ws": (port, i) => socketIo(port, i, ["websocket"]),
  "sio-polling": (port, i) => socketIo(port, i, ["polling"]),
};

async function measure(mode) {
  const { child, port } = await startNode();
  await sleep(1000);
  const before = rssKiB(child.pid);
  const conns = [];
  for (let i = 0; i < clients; i += 100) {
    const batch = [];
    for (let j = i; j < Math.min(clients, i + 100); j++) batch.push(open[mode](port, j));
    conns.push(...(await Promise.all(batch)));
  }
  await sleep(settleMs);
  const after = rssKiB(child.pid);
  for (const c of conns) (c.close || c.terminate).call(c);
  child.kill("SIGKILL");
  const row = { mode, clients, rooms, rss_before_kib: before, rss_after_kib: after,
    kib_per_connection: Number(((after - before) / clients).toFixed(2)) };
  console.log(JSON.stringify(row));
  return row;
}

const rows = [];
for (const mode of modes) rows.push(await measure(mode));
console.log("\n| client | connections | node RSS before → after (MiB) | KiB per connection |\n|---|---|---|---|");
for (const r of rows) {
  console.log(`| ${r.mode} | ${r.clients} | ${(r.rss_before_kib / 1024).toFixed(1)} → ${(r.rss_after_kib / 1024).toFixed(1)} | ${r.kib_per_connection} |`);
}
process.exit(0);
