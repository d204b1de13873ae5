// Headless-browser test of the demo web client served at `GET /`.
//
//   cargo build -p chatmesh && node --test tests/browser/
//
// Environment: CHATMESH_BIN (default <repo>/target/debug/chatmesh), CHROMIUM (default
// /usr/bin/chromium, Debian's `chromium` package). Screenshots go to tests/browser/out/.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, createWriteStream } from "node:fs";
import { createServer } from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, "..", "..");
const outDir = path.join(here, "out");
const bin = process.env.CHATMESH_BIN || path.join(repo, "target", "debug", "chatmesh");
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const pageFile = path.join(repo, "node", "src", "demo", "index.html");
const WAIT = 5000; // every UI wait

let node = null;       // the chatmesh child process
let browser = null;
let profileDir = null;
let staticServer = null; // only while the node does not serve `/` itself
let pageUrl = null;
const pages = {};       // name -> page, for screenshots on failure

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitReady(base, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  let last = "no answer";
  while (Date.now() < deadline) {
    if (node.exitCode !== null || node.signalCode !== null) {
      throw new Error(`chatmesh exited early (${node.exitCode ?? node.signalCode}); see ${outDir}/node.log`);
    }
    try {
      const res = await fetch(base + "/ready", { signal: AbortSignal.timeout(1000) });
      if (res.status === 200) return res.json().catch(() => ({}));
      last = `HTTP ${res.status}`;
    } catch (e) {
      last = e.message;
    }
    await sleep(100);
  }
  throw new Error(`GET /ready did not answer 200 within ${timeoutMs} ms (last: ${last})`);
}

/** Serves the page file on its own port; the page is pointed at the node with `?ws=`. */
function serveFile(file) {
  return new Promise((resolve) => {
    const srv = createServer((req, res) => {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      res.end(readFileSync(file));
    });
    srv.listen(0, "127.0.0.1", () => resolve(srv));
  });
}

let readyInfo = {};

before(async () => {
  mkdirSync(outDir, { recursive: true });
  if (!existsSync(executablePath)) {
    throw new Error(
      `Chromium not found at ${executablePath}. Install Debian's package: apt-get install -y chromium ` +
        `(or set CHROMIUM to a Chromium binary).`,
    );
  }
  if (!existsSync(bin)) {
    throw new Error(`chatmesh binary not found at ${bin}: build it first with \`cargo build -p chatmesh\` (or set CHATMESH_BIN).`);
  }
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const log = createWriteStream(path.join(outDir, "node.log"));
  node = spawn(bin, [], {
    env: { ...process.env, CHATMESH_HTTP__LISTEN: `127.0.0.1:${port}`, RUST_LOG: process.env.RUST_LOG || "info" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  node.stdout.pipe(log);
  node.stderr.pipe(log);
  readyInfo = await waitReady(base, 20000);

  // Use the node's own `GET /` when it serves the demo; until then serve the file beside it.
  const root = await fetch(base + "/", { signal: AbortSignal.timeout(3000) }).catch(() => null);
  const served = root && root.status === 200 && /chatmesh/i.test(await root.text());
  if (served) {
    pageUrl = base + "/";
  } else {
    staticServer = await serveFile(pageFile);
    const sp = staticServer.address().port;
    pageUrl = `http://127.0.0.1:${sp}/?ws=${encodeURIComponent(`ws://127.0.0.1:${port}/ws`)}`;
    console.log(`# the node does not serve GET / yet (HTTP ${root ? root.status : "no answer"}); serving ${pageFile} on port ${sp}`);
  }

  profileDir = mkdtempSync(path.join(os.tmpdir(), "chatmesh-chromium-"));
  const args = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ];
  // Playwright refuses `--user-data-dir` in `args` for launch(); it gives every launch a fresh
  // temporary profile of its own, created under TMPDIR, so point TMPDIR at our fresh directory.
  const savedTmp = process.env.TMPDIR;
  process.env.TMPDIR = profileDir;
  try {
    browser = await chromium.launch({ executablePath, args, headless: true, timeout: 30000 });
  } finally {
    if (savedTmp === undefined) delete process.env.TMPDIR; else process.env.TMPDIR = savedTmp;
  }
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  if (staticServer) staticServer.close();
  if (node && node.exitCode === null && node.signalCode === null) {
    const exited = new Promise((r) => node.once("exit", r));
    node.kill("SIGTERM");
    const done = await Promise.race([exited.then(() => true), sleep(5000).then(() => false)]);
    if (!done) node.kill("SIGKILL");
  }
  if (profileDir) rmSync(profileDir, { recursive: true, force: true });
});

process.on("exit", () => {
  if (node && node.exitCode === null) node.kill("SIGKILL");
});

// ---- page helpers ----------------------------------------------------------

async function openChat(context, name, user, room, query = "") {
  const page = await context.newPage();
  pages[name] = page;
  page.setDefaultTimeout(WAIT);
  page.on("pageerror", (e) => console.log(`# [${name}] page error: ${e.message}`));
  const url = query ? pageUrl + (pageUrl.includes("?") ? "&" : "?") + query : pageUrl;
  await page.goto(url, { timeout: 10000 });
  await page.fill("#user", user);
  await page.fill("#room", room);
  await page.click("#connect");
  // Joined: the composer is enabled only after `joined`.
  await page.waitForFunction(() => !document.querySelector("#text").disabled, null, { timeout: WAIT });
  return page;
}

async function say(page, text) {
  await page.fill("#text", text);
  await page.click("#send");
}

function waitText(page, selector, text, what) {
  return page
    .waitForFunction(
      ([sel, t]) => [...document.querySelectorAll(sel)].some((e) => e.textContent.includes(t)),
      [selector, text],
      { timeout: WAIT },
    )
    .catch((e) => {
      throw new Error(`${what}: "${text}" not in ${selector} within ${WAIT} ms (${e.message.split("\n")[0]})`);
    });
}

const countMsgs = (page, text) =>
  page.evaluate((t) => [...document.querySelectorAll("#messages .msg")].filter((e) => e.textContent.includes(t)).length, text);

async function screenshotAll(prefix) {
  for (const [name, page] of Object.entries(pages)) {
    if (page.isClosed()) continue;
    const file = path.join(outDir, `${prefix}-${name}.png`);
    await page.screenshot({ path: file, fullPage: true, timeout: WAIT }).catch(() => {});
    console.log(`# screenshot: ${file}`);
  }
}

// ---- the test --------------------------------------------------------------

test("two users chat, see presence, typing and the node; a returning user recovers missed messages", { timeout: 90000 }, async () => {
  const room = `demo-${Date.now().toString(36)}`;
  const tag = Math.random().toString(36).slice(2, 8);
  const aliceCtx = await browser.newContext({ viewport: { width: 900, height: 560 } });
  const bobCtx = await browser.newContext({ viewport: { width: 900, height: 560 } });
  try {
    const alice = await openChat(aliceCtx, "alice", "alice", room);
    let bob = await openChat(bobCtx, "bob", "bob", room);

    const first = `hello bob <b>${tag}</b> & co`;
    await alice.locator("#text").pressSequentially("hel"); // key events: the page sends `typing`
    await waitText(bob, "#typing", "alice", "alice's typing indicator in bob's page");
    await say(alice, first);
    await waitText(bob, "#messages .msg", first, "alice's message in bob's page");
    await waitText(bob, "#presence li", "alice", "alice in bob's presence");
    await waitText(alice, "#presence li", "bob", "bob in alice's presence");
    // User text is shown as text, never parsed as HTML.
    assert.equal(await bob.locator("#messages .msg b").count(), 0, "message text must be escaped");

    const nodeId = (await bob.textContent("#node")).trim();
    assert.ok(nodeId && nodeId !== "–", `#node shows a node id (got "${nodeId}")`);
    if (readyInfo.node) assert.equal(nodeId, readyInfo.node, "#node is the node that serves the page");

    await say(bob, `hi alice ${tag}`);
    await waitText(alice, "#messages .msg", `hi alice ${tag}`, "bob's answer in alice's page");
    await alice.screenshot({ path: path.join(outDir, "chat-alice.png"), timeout: WAIT });
    await bob.screenshot({ path: path.join(outDir, "chat-bob.png"), timeout: WAIT });

    // Recovery: bob goes away, alice sends two messages, bob comes back in the same browser
    // profile (its stored `pos`) and gets exactly the two he missed.
    await bob.close();
    delete pages.bob;
    const missed = [`missed one ${tag}`, `missed two ${tag}`];
    for (const m of missed) {
      await say(alice, m);
      await waitText(alice, "#messages .msg", m, "alice's own message echoed");
    }
    bob = await openChat(bobCtx, "bob", "bob", room);
    for (const m of missed) await waitText(bob, "#messages .msg", m, "missed message recovered by bob");
    await sleep(500); // let any duplicate arrive before counting
    for (const m of missed) assert.equal(await countMsgs(bob, m), 1, `"${m}" shown exactly once`);
    // Recovered through `join` with `since` (no history reload): the old messages are not replayed.
    assert.equal(await countMsgs(bob, `hi alice ${tag}`), 0, "only the missed messages are replayed");
    const order = await bob.evaluate(() => [...document.querySelectorAll("#messages .msg .text")].map((e) => e.textContent));
    assert.deepEqual(order.filter((t) => t.includes(tag)), missed, "missed messages in order");
  } catch (e) {
    await screenshotAll("failure");
    throw e;
  } finally {
    await aliceCtx.close().catch(() => {});
    await bobCtx.close().catch(() => {});
  }
});

test("a Socket.IO page and a native page chat in one room", { timeout: 60000 }, async () => {
  const room = `sio-${Date.now().toString(36)}`;
  const tag = Math.random().toString(36).slice(2, 8);
  const nativeCtx = await browser.newContext({ viewport: { width: 900, height: 560 } });
  const sioCtx = await browser.newContext({ viewport: { width: 900, height: 560 } });
  try {
    const dana = await openChat(nativeCtx, "dana", "dana", room);
    const erin = await openChat(sioCtx, "erin", "erin", room, "transport=socketio");
    assert.match(await erin.textContent("#node"), /socket\.io/, "erin's page is on Socket.IO");
    await say(erin, `from socket.io ${tag}`);
    await waitText(dana, "#messages .msg", `from socket.io ${tag}`, "erin's message in dana's page");
    await say(dana, `from /ws ${tag}`);
    await waitText(erin, "#messages .msg", `from /ws ${tag}`, "dana's message in erin's page");
    await waitText(erin, "#presence li", "dana", "dana in erin's presence");
    await waitText(dana, "#presence li", "erin", "erin in dana's presence");
    await erin.screenshot({ path: path.join(outDir, "chat-socketio.png"), timeout: WAIT });
  } catch (e) {
    await screenshotAll("failure-sio");
    throw e;
  } finally {
    await nativeCtx.close().catch(() => {});
    await sioCtx.close().catch(() => {});
  }
});
