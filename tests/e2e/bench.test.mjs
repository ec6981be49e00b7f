// `tandem bench` against a real `tandem serve` (bundled model + drafter, k = 3): the endpoint sweep
// (per-request k, acceptance from /metrics deltas) gives the same acceptance figures as the
// in-process sweep for the same greedy run; `tandem bench latency` streams at two concurrencies.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startServer, BINARY } from './server.mjs';

let server;
let dir;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'tandem-bench-e2e-'));
  server = await startServer(['--max-model-len', '512', '--served-model-name', 'demo', '--disable-log-stats']);
});

after(async () => {
  const code = await server?.stop();
  assert.equal(code, 0);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

function bench(args) {
  const r = spawnSync(BINARY, ['bench', ...args], { encoding: 'utf8', timeout: 300000 });
  assert.equal(r.status, 0, `tandem bench ${args.join(' ')} failed:\n${r.stderr}`);
  return r;
}

// Minimal CSV reader for what `tandem bench` writes (labels here need no quoting).
function readCsv(path) {
  const [head, ...lines] = readFileSync(path, 'utf8').trim().split('\n');
  const cols = head.split(',');
  return lines.map((l) => Object.fromEntries(l.split(',').map((v, i) => [cols[i], v])));
}

const common = ['--num-speculative-tokens', '0,1,2', '--iterations', '2', '--max-tokens', '16', '--warmup', '1'];

function checkSweepFiles(prefix) {
  const rows = readCsv(join(dir, `${prefix}.csv`));
  assert.equal(rows.length, 3, 'one CSV row per setting');
  assert.deepEqual(rows.map((r) => r.setting), ['baseline', 'k=1', 'k=2']);
  assert.equal(Number(rows[0].speedup), 1, 'baseline speedup is exactly 1');
  assert.equal(rows[0].acceptance_rate, '', 'the baseline drafts nothing');
  for (const r of rows.slice(1)) {
    const a = Number(r.acceptance_rate);
    assert.ok(a >= 0 && a <= 1, `acceptance ${a} in [0, 1]`);
    assert.ok(Number(r.num_drafts) > 0);
  }
  for (const r of rows) assert.equal(Number(r.completion_tokens), 32);
  const svg = readFileSync(join(dir, `${prefix}.svg`), 'utf8');
  const lint = spawnSync('xmllint', ['--noout', '-'], { input: svg, encoding: 'utf8' });
  if (!lint.error) assert.equal(lint.status, 0, `SVG is well-formed XML:\n${lint.stderr}`);
  assert.ok(svg.startsWith('<?xml') && svg.trimEnd().endsWith('</svg>'));
  assert.equal((svg.match(/<rect class="bar/g) || []).length, 3, 'one bar per setting');
  return rows;
}

let endpointJson;

test('bench sweep --endpoint: CSV, chart, acceptance from /metrics', () => {
  const out = ['--csv', join(dir, 'ep.csv'), '--json', join(dir, 'ep.json'), '--chart', join(dir, 'ep.svg')];
  const r = bench(['sweep', '--endpoint', server.url, ...common, ...out]);
  assert.match(r.stdout, /baseline/);
  checkSweepFiles('ep');
  endpointJson = JSON.parse(readFileSync(join(dir, 'ep.json'), 'utf8'));
  assert.equal(endpointJson.meta.mode, 'endpoint');
  assert.equal(endpointJson.meta.model, 'demo', 'the model name defaults to the first of /v1/models');
  assert.equal(endpointJson.meta.metrics, true);
});

test('endpoint acceptance figures equal the in-process figures for the same greedy run', () => {
  const out = ['--csv', join(dir, 'ip.csv'), '--json', join(dir, 'ip.json'), '--chart', join(dir, 'ip.svg')];
  bench(['sweep', ...common, ...out]);
  checkSweepFiles('ip');
  const inproc = JSON.parse(readFileSync(join(dir, 'ip.json'), 'utf8'));
  assert.ok(endpointJson, 'the endpoint sweep ran');
  for (let i = 0; i < 3; i++) {
    const a = endpointJson.settings[i];
    const b = inproc.settings[i];
    assert.equal(a.setting, b.setting);
    for (const key of ['num_drafts', 'num_draft_tokens', 'num_accepted_tokens', 'acceptance_rate',
      'mean_acceptance_length']) {
      assert.equal(a[key], b[key], `${a.setting}: ${key}`);
    }
    assert.deepEqual(a.accept_per_position, b.accept_per_position, `${a.setting}: per-position acceptance`);
  }
});

test('bench sweep --settings-from-restarts + bench merge', () => {
  // The server runs with k = 3; without the per-request field every request uses it.
  bench(['sweep', '--endpoint', server.url, '--settings-from-restarts', '--num-speculative-tokens', '3',
    '--label', 'server-k3', '--iterations', '1', '--warmup', '0', '--max-tokens', '16', '--csv', join(dir, 'k3.csv')]);
  const k3 = readCsv(join(dir, 'k3.csv'));
  assert.equal(k3.length, 1);
  assert.equal(k3[0].setting, 'server-k3');
  assert.ok(Number(k3[0].num_draft_tokens) > 0);
  bench(['merge', join(dir, 'ep.csv'), join(dir, 'k3.csv'), '--csv', join(dir, 'merged.csv'), '--chart',
    join(dir, 'merged.svg')]);
  const merged = readCsv(join(dir, 'merged.csv'));
  assert.deepEqual(merged.map((r) => r.setting), ['baseline', 'k=1', 'k=2', 'server-k3']);
  assert.equal(Number(merged[0].speedup), 1);
  assert.ok(Number(merged[3].speedup) > 0);
  const svg = readFileSync(join(dir, 'merged.svg'), 'utf8');
  assert.equal((svg.match(/<rect class="bar/g) || []).length, 4);
});

test('bench latency: streaming percentiles per concurrency level, bounded', () => {
  const csv = join(dir, 'lat.csv');
  bench(['latency', '--endpoint', server.url, '--concurrency', '1,2', '--duration', '20s', '--max-requests', '4',
    '--max-tokens', '8', '--csv', csv]);
  const rows = readCsv(csv);
  assert.equal(rows.length, 2);
  for (const r of rows) {
    assert.equal(Number(r.requests), 4);
    assert.equal(Number(r.errors), 0);
    assert.equal(Number(r.completion_tokens), 32);
    assert.ok(Number(r.ttft_ms_p50) > 0);
    assert.ok(Number(r.ttft_ms_p50) <= Number(r.ttft_ms_p99));
    assert.ok(Number(r.throughput_tok_s) > 0);
  }
});

// Serving benchmarks of full-size configs run on random weights: `serve CONFIG_DIR --load-format dummy`
// with the tokenizer from elsewhere, the drafter's config likewise. Here the MoE fixture's geometry
// (with the bundled tokenizer's vocabulary) and its assistant.
test('serve --load-format dummy: a config directory alone serves with a drafter; without a tokenizer, a clear error', async () => {
  const fixtures = new URL('../fixtures/', import.meta.url).pathname;
  const tokenizer = new URL('../../models/tandem-code-demo', import.meta.url).pathname;
  for (const [name, src] of [['target', 'gemma4-moe'], ['draft', 'gemma4-moe-assistant']]) {
    mkdirSync(join(dir, name));
    const config = JSON.parse(readFileSync(join(fixtures, src, 'config.json'), 'utf8'));
    config.text_config.vocab_size = 8192;
    if (config.text_config.vocab_size_per_layer_input) config.text_config.vocab_size_per_layer_input = 8192;
    writeFileSync(join(dir, name, 'config.json'), JSON.stringify(config));
  }
  const refused = spawnSync(BINARY, ['serve', join(dir, 'target'), '--load-format', 'dummy', '--port', '0'],
    { encoding: 'utf8', timeout: 60000 });
  assert.notEqual(refused.status, 0);
  assert.match(refused.stderr, /--load-format dummy: .* has no tokenizer\.json; give one with --tokenizer DIR/);

  const dummy = await startServer([join(dir, 'target'), '--load-format', 'dummy', '--tokenizer', tokenizer,
    '--max-model-len', '256', '--disable-log-stats', '--speculative-config',
    JSON.stringify({ model: join(dir, 'draft'), num_speculative_tokens: 2 })]);
  try {
    const csv = join(dir, 'dummy-lat.csv');
    bench(['latency', '--endpoint', dummy.url, '--concurrency', '1,2', '--duration', '20s', '--max-requests', '2',
      '--max-tokens', '8', '--csv', csv]);
    for (const r of readCsv(csv)) {
      assert.equal(Number(r.errors), 0);
      assert.equal(Number(r.completion_tokens), 16);
    }
  } finally {
    assert.equal(await dummy.stop(), 0);
  }
});
