// Load test of `tandem serve` on loopback: N concurrent clients (default 64) for D seconds
// (default 60), each looping over streaming / non-streaming completions and chat requests.
// Bounded in time and count; prints throughput, latency percentiles, failures and server RSS.
//   TANDEM_BINARY=build/tandem node loadtest.mjs [--clients 64] [--seconds 60] [--max-requests 200000]
//   node loadtest.mjs --url http://127.0.0.1:8000   (an already running server; RSS only if --pid given)
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import OpenAI from 'openai';

const { values: opt } = parseArgs({
  options: {
    clients: { type: 'string', default: '64' },
    seconds: { type: 'string', default: '60' },
    'max-requests': { type: 'string', default: '200000' },
    'max-tokens': { type: 'string', default: '48' },
    url: { type: 'string' },
    pid: { type: 'string' },
    json: { type: 'boolean', default: false },
  },
});
const clients = Number(opt.clients);
const seconds = Number(opt.seconds);
const maxRequests = Number(opt['max-requests']);
const maxTokens = Number(opt['max-tokens']);

let server = null;
let url = opt.url;
let pid = opt.pid ? Number(opt.pid) : null;
if (!url) {
  const { startServer } = await import('./server.mjs');
  server = await startServer(['--max-num-seqs', String(Math.max(clients, 1)), '--served-model-name', 'demo']);
  url = server.url;
  pid = server.proc.pid;
}
if (!/^http:\/\/(127\.\d+\.\d+\.\d+|localhost|\[::1\]):\d+/.test(url)) throw new Error('loopback addresses only');

const rssKiB = () => {
  if (!pid) return null;
  const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/);
  return m ? Number(m[1]) : null;
};

const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 120000 });
const model = (await client.models.list()).data[0].id;
const prompts = [
  'def fibonacci(n):\n', 'import os\nimport sys\n\n', 'class LinkedList:\n    def __init__(self):\n',
  'def read_config(path):\n    """Read a JSON config."""\n', '# HTTP helpers\nimport json\n', 'for i in range(10):\n',
  'def test_parse():\n    assert', 'if __name__ == "__main__":\n',
];

// Warm-up (also the "before" RSS point: model loaded, allocator warmed).
for (let i = 0; i < 4; i++) await client.completions.create({ model, prompt: prompts[i], max_tokens: 8 });
const rssBefore = rssKiB();

const latencies = [];
const ttfts = [];
let ok = 0;
let failed = 0;
let outputTokens = 0;
let issued = 0;
const errors = new Map();
const t0 = performance.now();
const deadline = t0 + seconds * 1000;
const rssSamples = [];  // MiB every 10 s: should plateau, not climb
const sampler = setInterval(() => rssSamples.push(Math.round((rssKiB() ?? 0) / 1024)), 10000);

async function one(i) {
  const prompt = prompts[i % prompts.length];
  const kind = i % 4;  // 0: completion, 1: streamed completion, 2: chat, 3: streamed chat
  const sampling = i % 3 === 0 ? { temperature: 0.8, seed: i } : { temperature: 0 };
  const start = performance.now();
  if (kind === 0) {
    const r = await client.completions.create({ model, prompt, max_tokens: maxTokens, ...sampling });
    outputTokens += r.usage.completion_tokens;
  } else if (kind === 2) {
    const r = await client.chat.completions.create({
      model, messages: [{ role: 'user', content: prompt }], max_tokens: maxTokens, ...sampling,
    });
    outputTokens += r.usage.completion_tokens;
  } else {
    const params = { model, max_tokens: maxTokens, ...sampling, stream: true, stream_options: { include_usage: true } };
    const stream = kind === 1
      ? await client.completions.create({ ...params, prompt })
      : await client.chat.completions.create({ ...params, messages: [{ role: 'user', content: prompt }] });
    let first = null;
    for await (const chunk of stream) {
      if (first === null && chunk.choices.length) first = performance.now();
      if (chunk.usage) outputTokens += chunk.usage.completion_tokens;
    }
    if (first !== null) ttfts.push(first - start);
  }
  latencies.push(performance.now() - start);
}

async function worker() {
  while (performance.now() < deadline && issued < maxRequests) {
    const i = issued++;
    try {
      await one(i);
      ok++;
    } catch (e) {
      failed++;
      const key = String(e?.status ?? e?.code ?? e?.message).slice(0, 120);
      errors.set(key, (errors.get(key) ?? 0) + 1);
    }
  }
}

await Promise.all(Array.from({ length: clients }, worker));
const elapsed = (performance.now() - t0) / 1000;
clearInterval(sampler);
await new Promise((r) => setTimeout(r, 500));
const rssAfter = rssKiB();

const pct = (xs, p) => {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};
const metricsText = await (await fetch(`${url}/metrics`)).text();
const metric = (name) => Number(metricsText.match(new RegExp(`^${name}\\{[^}]*\\} (\\S+)$`, 'm'))?.[1] ?? NaN);
const report = {
  clients, seconds: Number(elapsed.toFixed(1)), requests_ok: ok, requests_failed: failed,
  errors: Object.fromEntries(errors),
  requests_per_s: Number((ok / elapsed).toFixed(2)),
  output_tokens_per_s: Number((outputTokens / elapsed).toFixed(1)),
  latency_ms: { p50: pct(latencies, 50), p90: pct(latencies, 90), p99: pct(latencies, 99), max: pct(latencies, 100) },
  ttft_ms_streamed: { p50: pct(ttfts, 50), p90: pct(ttfts, 90), p99: pct(ttfts, 99) },
  rss_mib: {
    before: rssBefore && Math.round(rssBefore / 1024), every_10s: rssSamples, after: rssAfter && Math.round(rssAfter / 1024),
  },
  spec_acceptance: metric('vllm:spec_decode_num_accepted_tokens_total') / metric('vllm:spec_decode_num_draft_tokens_total'),
  running_after: metric('vllm:num_requests_running'), kv_usage_after: metric('vllm:kv_cache_usage_perc'),
};
for (const k of ['p50', 'p90', 'p99', 'max']) if (report.latency_ms[k] != null) report.latency_ms[k] = Math.round(report.latency_ms[k]);
for (const k of ['p50', 'p90', 'p99']) if (report.ttft_ms_streamed[k] != null) report.ttft_ms_streamed[k] = Math.round(report.ttft_ms_streamed[k]);
console.log(JSON.stringify(report, null, 2));
if (server) await server.stop();
process.exitCode = failed === 0 ? 0 : 1;
