// The web page at / in a real browser: Debian's headless Chromium driven by puppeteer-core against
// `tandem serve` on the bundled model + drafter. Chat (streamed, tokens shaded by the spec trace and
// counted against /metrics), stop (the server counts an abort), a short sweep (one chart point per
// setting), the API-key prompt, and no horizontal scrolling at 360 px. Screenshots go to
// $TANDEM_E2E_ARTIFACTS (default: e2e-artifacts next to the binary).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import puppeteer from 'puppeteer-core';
import { startServer, metrics, BINARY } from './server.mjs';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = process.env.TANDEM_E2E_ARTIFACTS || join(dirname(BINARY), 'e2e-artifacts');

let server, browser, page;
const problems = [];  // console errors (CSP violations show up here) and uncaught page errors

// Sum of a metric's samples (all label sets, or those passing `filter` on the label text).
async function metric(name, filter = () => true) {
  const { text } = await metrics(server.url);
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = line.match(/^([^{\s]+)(\{[^}]*\})?\s+(\S+)$/);
    if (m && m[1] === name && filter(m[2] || '')) sum += Number(m[3]);
  }
  return sum;
}
const accepted = () => metric('vllm:spec_decode_num_accepted_tokens_total');
const aborts = () => metric('vllm:request_success_total', (l) => l.includes('finished_reason="abort"'));

async function newPage(width, height) {
  const p = await browser.newPage();
  await p.setViewport({ width, height, deviceScaleFactor: 1 });
  p.on('console', (m) => m.type() === 'error' && problems.push(`console: ${m.text()}`));
  p.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  return p;
}

async function setValue(selector, value) {
  await page.$eval(selector, (el, v) => (el.value = v), String(value));
}

const lastMessage = () => page.$('#messages > li:last-child');

// Sends a prompt with the keyboard and returns once the answer has its first `minTokens` tokens.
async function send(prompt, minTokens = 1) {
  await page.focus('#prompt');
  await page.keyboard.type(prompt);
  await page.keyboard.press('Enter');
  await page.waitForFunction(
    (n) => {
      const li = document.querySelector('#messages > li:last-child.assistant');
      return li && (li.dataset.state !== 'streaming' || li.querySelectorAll('.tok').length >= n);
    },
    { timeout: 60000 },
    minTokens,
  );
}

async function finished() {
  await page.waitForFunction(
    () => document.querySelector('#messages > li:last-child')?.dataset.state !== 'streaming',
    { timeout: 120000 },
  );
  return page.$eval('#messages > li:last-child', (li) => li.dataset.state);
}

before(async () => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing (scripts/install-deps.sh installs Debian's chromium)`);
  mkdirSync(ARTIFACTS, { recursive: true });
  server = await startServer(['--max-model-len', '2048', '--served-model-name', 'demo', '--disable-log-stats']);
  browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Root (CI containers) cannot use Chromium's sandbox; /dev/shm is small in containers.
    args: [...(process.getuid?.() === 0 ? ['--no-sandbox'] : []), '--disable-dev-shm-usage'],
  });
  page = await newPage(1280, 860);
});

after(async () => {
  await browser?.close();
  const code = await server?.stop();
  assert.equal(code, 0);
});

test('the page loads from the binary, with a CSP, and finds the model and its metrics', async () => {
  const res = await page.goto(server.url, { waitUntil: 'load' });
  assert.equal(res.status(), 200);
  assert.match(res.headers()['content-security-policy'], /^default-src 'self';/);
  const licenses = await fetch(new URL(await page.$eval('a[href="licenses.txt"]', (a) => a.href)));
  assert.equal(licenses.status, 200);
  assert.match(await licenses.text(), /marked[\s\S]*highlight\.js/);
  await page.waitForFunction(() => document.querySelector('#model').textContent === 'model: demo');
  await page.waitForFunction(() => document.querySelectorAll('#positions .pos').length > 0);
  await page.waitForFunction(() => document.querySelector('#spec-k').max !== '');
  assert.equal(await page.$eval('#spec-k', (el) => el.max), '2', 'the bundled pair runs with k = 2');
});

test('a chat answer streams, and its shaded accepted drafts are what /metrics counted', async () => {
  await page.click('#settings summary');
  await setValue('#temperature', 0);
  await setValue('#max-tokens', 48);
  const before = await accepted();
  await send('Write a Python function that returns the sum of a list.');
  assert.equal(await finished(), 'done');
  const li = await lastMessage();
  const kinds = await li.$$eval('.body .tok', (spans) => spans.map((s) => s.className));
  const drafts = kinds.filter((c) => c === 'tok tok-draft').length;
  assert.ok(kinds.length > 0 && kinds.length <= 48, `${kinds.length} tokens`);
  assert.ok(kinds.every((c) => /^tok tok-(draft|bonus|correction|target)$/.test(c)), kinds.join());
  assert.ok(drafts > 0, 'the drafter got some tokens accepted');
  assert.equal(drafts, (await accepted()) - before, 'marked drafts = the server\'s accepted-draft counter delta');
  const title = await li.$eval('.body .tok-draft', (s) => s.title);
  assert.match(title, /^round \d+, position \d+: accepted draft$/);
  // The panel has seen the drafts once its next poll lands.
  await page.waitForFunction(() => document.querySelector('#metric-accept_all .value').textContent !== '–');
  // The whole conversation in one picture: a window as tall as the page (the composer sticks to
  // the window's bottom, so a full-page capture of a shorter window would draw it mid-page).
  const height = await page.evaluate(() => document.documentElement.scrollHeight);
  await page.setViewport({ width: 1280, height, deviceScaleFactor: 1 });
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: join(ARTIFACTS, 'webui-chat-desktop.png') });
  await page.setViewport({ width: 1280, height: 860, deviceScaleFactor: 1 });

  // The same answer as Markdown, and back.
  await li.$eval('.view-toggle', (b) => b.click());
  assert.equal(await li.$$eval('.body .tok', (s) => s.length), 0);
  assert.ok((await li.$eval('.body', (b) => b.textContent)).length > 0);
  await li.$eval('.view-toggle', (b) => b.click());
  assert.equal(await li.$$eval('.body .tok', (s) => s.length), kinds.length);
});

test('stop aborts the generation in the server', async () => {
  await setValue('#max-tokens', 1800);
  const before = await aborts();
  await send('Write a long Python module with many classes.', 8);
  await page.click('#stop');
  assert.equal(await finished(), 'stopped');
  const tokens = await (await lastMessage()).$$eval('.body .tok', (s) => s.length);
  assert.ok(tokens < 1800, `stopped after ${tokens} tokens`);
  // The server notices the closed connection within its 100 ms poll; wait for the counter.
  let after = before;
  for (let i = 0; i < 100 && after === before; i++) {
    await new Promise((r) => setTimeout(r, 100));
    after = await aborts();
  }
  assert.equal(after, before + 1, 'one request finished with reason "abort"');
});

test('a short sweep draws one point per setting', async () => {
  await page.click('#tab-sweep');
  await setValue('#sweep-k', 2);
  await setValue('#sweep-iterations', 2);
  await setValue('#sweep-max-tokens', 16);
  await setValue('#sweep-prompts', 'def fibonacci(n):\nclass Stack:');
  await page.click('#sweep-run');
  await page.waitForFunction(() => /^(Done|Sweep failed)/.test(document.querySelector('#sweep-status').textContent), {
    timeout: 300000,
  });
  assert.match(await page.$eval('#sweep-status', (e) => e.textContent), /^Done/);
  const points = await page.$$eval('#sweep-charts svg', (charts) => charts.map((c) => c.querySelectorAll('circle.point').length));
  assert.deepEqual(points, [3, 2], 'tok/s: baseline, k=1, k=2; acceptance: k=1, k=2');
  const rows = await page.$$eval('#sweep-table tbody tr', (trs) => trs.map((tr) => tr.cells[0].textContent));
  assert.deepEqual(rows, ['baseline', 'k=1', 'k=2']);
  await page.screenshot({ path: join(ARTIFACTS, 'webui-sweep-desktop.png') });
  await page.click('#tab-chat');
});

test('bad sweep requests are 400s naming the field, and the server carries on', async () => {
  const post = (body) =>
    fetch(`${server.url}/tandem/sweep`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body });
  for (const [body, param] of [
    ['{}', 'ks'],
    ['{"ks":[0,3],"prompts":["x"]}', 'ks'],  // the server's k is 2
    ['{"ks":[0,1.5],"prompts":["x"]}', 'ks'],
    ['{"ks":[0,1]}', 'prompts'],
    ['{"ks":[0,1],"prompts":"x"}', 'prompts'],
    ['{"ks":[0,1],"prompts":["x",""]}', 'prompts'],
    ['{"ks":[0,1],"prompts":["x"],"iterations":0}', 'iterations'],
    ['{"ks":[0,1],"prompts":["x"],"max_tokens":"9"}', 'max_tokens'],
  ]) {
    const res = await post(body);
    assert.equal(res.status, 400, body);
    assert.equal((await res.json()).error.param, param, body);
  }
  assert.equal((await post('[1,')).status, 400);
  assert.equal((await fetch(`${server.url}/health`)).status, 200);
});

test('at 360 px wide nothing scrolls sideways', async () => {
  await page.setViewport({ width: 360, height: 780, deviceScaleFactor: 1 });
  await page.reload({ waitUntil: 'load' });
  await page.waitForFunction(() => document.querySelectorAll('#messages > li').length > 0);  // history kept
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(width <= 360, `page is ${width} px wide`);
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: join(ARTIFACTS, 'webui-chat-360.png') });
  await page.$eval('.panel', (p) => p.scrollIntoView());
  await page.screenshot({ path: join(ARTIFACTS, 'webui-metrics-360.png') });
  await page.click('#tab-sweep');
  assert.ok((await page.evaluate(() => document.documentElement.scrollWidth)) <= 360);
});

test('with --api-key the page asks for the key and then uses it', async () => {
  const keyed = await startServer(['--max-model-len', '512', '--api-key', 'sekrit', '--disable-log-stats']);
  const p = await newPage(1000, 700);
  try {
    const res = await p.goto(keyed.url, { waitUntil: 'load' });
    assert.equal(res.status(), 200, 'the page itself is public');
    await p.waitForSelector('#key-dialog[open]');
    await p.type('#key-input', 'sekrit');
    await p.click('#key-form button[value="save"]');
    await p.waitForFunction(() => document.querySelector('#model').textContent.startsWith('model: '));
  } finally {
    await p.close();
    assert.equal(await keyed.stop(), 0);
  }
});

test('no console errors or CSP violations', () => {
  // The browser logs the keyed server's 401 (the call before the key was given); nothing else.
  assert.deepEqual(problems.filter((p) => !/401 \(Unauthorized\)/.test(p)), []);
});
