// Self-test of driver.mjs against a real in-process socket.io Server (the
// devDependency) with connection-state recovery, serving join/message like
// the peer at ../shared/peers/socketio/server/socketio-server.js.
// Run: node --test tests/socketio/
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { Server } from 'socket.io';

const driverPath = fileURLToPath(new URL('./driver.mjs', import.meta.url));

// The driver process, its stdout lines as a queue searched by predicate.
class Driver {
  constructor() {
    this.child = spawn(process.execPath, [driverPath], { stdio: ['pipe', 'pipe', 'inherit'] });
    this.lines = [];
    this.waiters = [];
    createInterface({ input: this.child.stdout }).on('line', (line) => {
      this.lines.push(JSON.parse(line));
      this.waiters.splice(0).forEach((wake) => wake());
    });
  }

  send(cmd) {
    this.child.stdin.write(JSON.stringify(cmd) + '\n');
  }

  async next(pred, ms = 3000) {
    const deadline = Date.now() + ms;
    for (;;) {
      const i = this.lines.findIndex(pred);
      if (i >= 0) return this.lines.splice(i, 1)[0];
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no matching line; buffered: ${JSON.stringify(this.lines)}`);
      await new Promise((wake) => {
        const timer = setTimeout(wake, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          wake();
        });
      });
    }
  }

  async run(cmd) {
    this.send(cmd);
    return this.next((l) => l.type === 'done' && l.op === cmd.op && l.id === (cmd.id ?? null));
  }

  of(id, type) {
    return (l) => l.id === id && l.type === type;
  }
}

let http;
let io;
let url;
let driver;

before(async () => {
  http = createServer();
  io = new Server(http, {
    connectionStateRecovery: { maxDisconnectionDuration: 10_000, skipMiddlewares: true },
  });
  io.use((socket, next) => {
    if (socket.handshake.auth?.token !== 'bad') return next();
    const err = new Error('unauthorized');
    err.data = { code: 'bad_token' };
    next(err);
  });
  io.on('connection', (socket) => {
    socket.on('join', (room, ack) => {
      socket.join(room);
      ack?.({ ok: true, room });
    });
    socket.on('message', (msg, ack) => {
      io.to(msg.roomId).emit('message', msg);
      ack?.({ ok: true });
    });
    socket.on('echo', (...args) => {
      const ack = typeof args.at(-1) === 'function' ? args.pop() : null;
      ack?.(...args);
    });
  });
  await new Promise((ok) => http.listen(0, '127.0.0.1', ok));
  url = `http://127.0.0.1:${http.address().port}`;
  driver = new Driver();
  await driver.next((l) => l.type === 'ready');
});

after(async () => {
  await driver.run({ op: 'exit' });
  io.close();
});

test('default transports: polling first, then the upgrade to websocket', async () => {
  await driver.run({ op: 'connect', id: 'p', url });
  const connected = await driver.next(driver.of('p', 'connect'));
  // The CONNECT reply may already come over the upgraded transport.
  assert.ok(['polling', 'websocket'].includes(connected.transport), connected.transport);
  assert.equal(connected.recovered, false);
  assert.equal(typeof connected.sid, 'string');
  const upgrade = await driver.next(driver.of('p', 'upgrade'));
  assert.equal(upgrade.transport, 'websocket');
  await driver.run({ op: 'close', id: 'p' });
  const gone = await driver.next(driver.of('p', 'disconnect'));
  assert.equal(gone.reason, 'io client disconnect');
});

test('websocket only: ack, event, binary, drop and recovery', async () => {
  const opts = { transports: ['websocket'], reconnectionDelay: 50, reconnectionDelayMax: 100 };
  await driver.run({ op: 'connect', id: 'w', url, opts });
  const connected = await driver.next(driver.of('w', 'connect'));
  assert.equal(connected.transport, 'websocket');

  await driver.run({ op: 'emit', id: 'w', event: 'join', args: ['r1'], ack: 'k1' });
  const joined = await driver.next((l) => l.type === 'ack' && l.ack === 'k1');
  assert.deepEqual({ err: joined.err, args: joined.args }, { err: null, args: [{ ok: true, room: 'r1' }] });

  const msg = { roomId: 'r1', text: 'hi', sender: 'w', ts: 1 };
  await driver.run({ op: 'emit', id: 'w', event: 'message', args: [msg] });
  const got = await driver.next((l) => l.id === 'w' && l.type === 'event' && l.event === 'message');
  assert.deepEqual(got.args[0], msg);
  // With recovery on, the server appends the packet's offset to the args.
  assert.equal(typeof got.args.at(-1), 'string');

  const bin = { $binary: Buffer.from([0, 1, 2, 255]).toString('base64') };
  await driver.run({ op: 'emit', id: 'w', event: 'echo', args: ['b', bin], ack: 'k2' });
  const echoed = await driver.next((l) => l.type === 'ack' && l.ack === 'k2');
  assert.deepEqual(echoed.args, ['b', bin]);

  await driver.run({ op: 'drop', id: 'w' });
  const dropped = await driver.next(driver.of('w', 'disconnect'));
  // engine.close() on the client side: the manager reconnects at once.
  assert.equal(dropped.reason, 'forced close');
  const back = await driver.next(driver.of('w', 'connect'));
  assert.equal(back.recovered, true);
  assert.equal(back.sid, connected.sid);
  await driver.run({ op: 'close', id: 'w' });
});

test('connect_error from a middleware, with its data', async () => {
  const opts = { transports: ['websocket'], auth: { token: 'bad' }, reconnection: false };
  await driver.run({ op: 'connect', id: 'x', url, opts });
  const failed = await driver.next(driver.of('x', 'connect_error'));
  assert.equal(failed.message, 'unauthorized');
  assert.deepEqual(failed.data, { code: 'bad_token' });
  await driver.run({ op: 'close', id: 'x' });
});

test('ack timeout, and bad commands answered with error then done', async () => {
  await driver.run({ op: 'connect', id: 't', url, opts: { transports: ['websocket'] } });
  await driver.next(driver.of('t', 'connect'));
  // 'nobody' has no handler on the server: the ack never comes.
  await driver.run({ op: 'emit', id: 't', event: 'nobody', args: [], ack: 'k3', timeout_ms: 100 });
  const late = await driver.next((l) => l.type === 'ack' && l.ack === 'k3');
  assert.equal(late.err, 'operation has timed out');
  await driver.run({ op: 'close', id: 't' });

  driver.send({ op: 'nope', id: 'z' });
  const err = await driver.next((l) => l.type === 'error' && l.id === 'z');
  assert.match(err.message, /unknown op/);
  await driver.next((l) => l.type === 'done' && l.id === 'z');
  await driver.run({ op: 'emit', id: 'missing', event: 'e' });
  const missing = await driver.next((l) => l.type === 'error' && l.id === 'missing');
  assert.match(missing.message, /no socket/);
});
