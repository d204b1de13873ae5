// Drives the real npm socket.io-client for the Rust tests (tests/src/sio.rs).
//
// Protocol: one JSON object per line on stdin (commands), one JSON object per
// line on stdout (events). Nothing else goes to stdout; diagnostics go to
// stderr. Every command is answered with {"type":"done","op","id"}; a command
// that failed first gets {"type":"error","op","id","message"}.
//
//   {"op":"connect","id":"c1","url":"http://127.0.0.1:PORT","opts":{...}}
//   {"op":"emit","id":"c1","event":"join","args":[...],"ack":"k1","timeout_ms":5000}
//   {"op":"drop","id":"c1"}    closes the engine: the manager reconnects and the
//                              socket tries connection-state recovery
//   {"op":"close","id":"c1"}   socket.disconnect()
//   {"op":"exit"}              closes every socket, exits 0
//
// Binary values travel as {"$binary": "<base64>"} both ways. A function in an
// event's args (the server asked for an ack) is written as {"$ack": true}.
import { createInterface } from 'node:readline';
import { io } from 'socket.io-client';

const sockets = new Map();

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function isBinary(v) {
  return Buffer.isBuffer(v) || v instanceof ArrayBuffer || ArrayBuffer.isView(v);
}

// Wire values -> JSON: Buffers become {"$binary": base64}.
function encode(v) {
  if (isBinary(v)) {
    const buf = Buffer.isBuffer(v)
      ? v
      : v instanceof ArrayBuffer
        ? Buffer.from(v)
        : Buffer.from(v.buffer, v.byteOffset, v.byteLength);
    return { $binary: buf.toString('base64') };
  }
  if (typeof v === 'function') return { $ack: true };
  if (Array.isArray(v)) return v.map(encode);
  if (v && typeof v === 'object') {
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, encode(x)]));
  }
  return v === undefined ? null : v;
}

// JSON -> wire values: {"$binary": base64} becomes a Buffer.
function decode(v) {
  if (Array.isArray(v)) return v.map(decode);
  if (v && typeof v === 'object') {
    const keys = Object.keys(v);
    if (keys.length === 1 && keys[0] === '$binary' && typeof v.$binary === 'string') {
      return Buffer.from(v.$binary, 'base64');
    }
    return Object.fromEntries(keys.map((k) => [k, decode(v[k])]));
  }
  return v;
}

function socketOf(id) {
  const socket = sockets.get(id);
  if (!socket) throw new Error(`no socket with id ${JSON.stringify(id)}`);
  return socket;
}

function connect({ id, url, opts }) {
  if (typeof id !== 'string' || typeof url !== 'string') {
    throw new Error('connect needs a string "id" and "url"');
  }
  if (sockets.has(id)) throw new Error(`socket id ${JSON.stringify(id)} is in use`);
  const socket = io(url, { forceNew: true, ...(opts ?? {}) });
  sockets.set(id, socket);
  socket.on('connect', () => {
    out({
      id,
      type: 'connect',
      recovered: socket.recovered,
      sid: socket.id,
      transport: socket.io.engine?.transport?.name ?? null,
    });
  });
  socket.on('connect_error', (err) => {
    out({ id, type: 'connect_error', message: String(err.message), data: encode(err.data ?? null) });
  });
  socket.on('disconnect', (reason) => out({ id, type: 'disconnect', reason }));
  socket.onAny((event, ...args) => out({ id, type: 'event', event, args: encode(args) }));
  // Every reconnection opens a new engine: listen on each one.
  socket.io.on('open', () => {
    socket.io.engine.on('upgrade', (transport) => {
      out({ id, type: 'upgrade', transport: transport.name });
    });
  });
}

function emit({ id, event, args, ack, timeout_ms: timeoutMs }) {
  const socket = socketOf(id);
  if (typeof event !== 'string') throw new Error('emit needs a string "event"');
  if (args !== undefined && !Array.isArray(args)) throw new Error('"args" must be an array');
  const values = decode(args ?? []);
  if (ack === undefined || ack === null) {
    socket.emit(event, ...values);
    return;
  }
  socket.timeout(timeoutMs ?? 5000).emit(event, ...values, (err, ...res) => {
    out({ id, type: 'ack', ack, err: err ? String(err.message) : null, args: encode(res) });
  });
}

function close({ id }) {
  socketOf(id).disconnect();
  sockets.delete(id);
}

function closeAll() {
  for (const socket of sockets.values()) socket.disconnect();
  sockets.clear();
}

function exit() {
  closeAll();
  out({ type: 'done', op: 'exit', id: null });
  process.stdout.write('', () => process.exit(0));
}

const ops = {
  connect,
  emit,
  drop: ({ id }) => socketOf(id).io.engine.close(),
  close,
};

function handle(line) {
  if (line.trim() === '') return;
  let cmd = null;
  try {
    cmd = JSON.parse(line);
    if (!cmd || typeof cmd !== 'object') throw new Error('a command is a JSON object');
    if (cmd.op === 'exit') return exit();
    const op = ops[cmd.op];
    if (!op) throw new Error(`unknown op ${JSON.stringify(cmd.op)}`);
    op(cmd);
  } catch (err) {
    out({ type: 'error', op: cmd?.op ?? null, id: cmd?.id ?? null, message: String(err.message) });
  }
  out({ type: 'done', op: cmd?.op ?? null, id: cmd?.id ?? null });
}

const lines = createInterface({ input: process.stdin });
lines.on('line', handle);
// The caller went away: nothing is left to drive.
lines.on('close', () => {
  closeAll();
  process.exit(0);
});
process.on('uncaughtException', (err) => console.error('[sio driver] uncaught:', err));
out({ type: 'ready' });
