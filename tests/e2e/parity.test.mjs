// vLLM parity of `tandem serve` (docs/API.md): the extra request parameters, client disconnects,
// CORS, /version, metrics, flag validation before the model loads, body limits. Official openai
// client where it can express the request (it passes vLLM's extra fields through), fetch otherwise.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import OpenAI from 'openai';
import { BINARY, startServer, postJson, parseMetrics, metrics } from './server.mjs';

let server;
let client;
const model = 'demo';
const greedy = { temperature: 0 };
const m = (name, extra = '') => `${name}{model_name="${model}"${extra}}`;

before(async () => {
  server = await startServer(['--max-model-len', '512', '--served-model-name', model]);
  client = server.client();
});

after(async () => {
  assert.equal(await server?.stop(), 0);
});

async function complete(prompt, extra = {}) {
  return client.completions.create({ model, prompt, max_tokens: 16, ...greedy, ...extra });
}

async function tokenize(prompt) {
  const r = await postJson(`${server.url}/tokenize`, { model, prompt });
  assert.equal(r.status, 200);
  return r.json.tokens;
}

function expect400(param) {
  return (err) => {
    assert.ok(err instanceof OpenAI.APIError, String(err));
    assert.equal(err.status, 400, err.message);
    assert.equal(err.error.param, param, JSON.stringify(err.error));
    return true;
  };
}

function rssKb(pid) {
  const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/);
  return Number(m[1]);
}

// The token id of a short piece of text, and its string.
async function oneToken(text) {
  const r = await postJson(`${server.url}/tokenize`, { model, prompt: text, add_special_tokens: false, return_token_strs: true });
  return { id: r.json.tokens[0], str: r.json.token_strs[0] };
}

test('min_tokens: a stop token id does not end the output before min_tokens', async () => {
  const prompt = 'def parse(line):\n';
  const t = await oneToken('pass');
  const bias = { logit_bias: { [t.id]: 100 }, stop_token_ids: [t.id], max_tokens: 24 };
  const short = await complete(prompt, bias);  // the biased token comes first and stops
  assert.equal(short.usage.completion_tokens, 1);
  assert.equal(short.choices[0].finish_reason, 'stop');
  assert.equal(short.choices[0].stop_reason, t.id);
  // vLLM: stop ids are masked while fewer than min_tokens tokens exist, so 5 others come first.
  const longer = await complete(prompt, { ...bias, min_tokens: 5 });
  assert.equal(longer.usage.completion_tokens, 6, JSON.stringify(longer.choices[0]));
  assert.equal(longer.choices[0].finish_reason, 'stop');
  await assert.rejects(complete(prompt, { max_tokens: 4, min_tokens: 5 }), expect400('min_tokens'));
});

test('include_stop_str_in_output keeps the matched stop string', async () => {
  const prompt = 'def parse_args(argv):\n';
  const full = (await complete(prompt, { max_tokens: 40, ignore_eos: true })).choices[0].text;
  const stop = full.slice(8, 12);
  const cut = full.slice(0, full.indexOf(stop));
  const r = await complete(prompt, { max_tokens: 40, ignore_eos: true, stop, include_stop_str_in_output: true });
  assert.equal(r.choices[0].text, cut + stop);
  assert.equal(r.choices[0].finish_reason, 'stop');
  const plain = await complete(prompt, { max_tokens: 40, ignore_eos: true, stop });
  assert.equal(plain.choices[0].text, cut);
});

test('logit_bias, allowed_token_ids and repetition_penalty change greedy output as vLLM', async () => {
  const prompt = 'import os\n';
  const base = await complete(prompt, { max_tokens: 12, ignore_eos: true });
  const t = await oneToken('pass');
  const biased = await complete(prompt, { max_tokens: 6, ignore_eos: true, logit_bias: { [t.id]: 100 }, logprobs: 0 });
  assert.deepEqual(biased.choices[0].logprobs.tokens, Array(6).fill(t.str));
  const allowed = await complete(prompt, { max_tokens: 4, ignore_eos: true, allowed_token_ids: [t.id], logprobs: 0 });
  assert.deepEqual(allowed.choices[0].logprobs.tokens, Array(4).fill(t.str));
  const penalized = await complete(prompt, { max_tokens: 12, ignore_eos: true, repetition_penalty: 5.0 });
  assert.notEqual(penalized.choices[0].text, base.choices[0].text);
  const neutral = await complete(prompt, { max_tokens: 12, ignore_eos: true, repetition_penalty: 1.0 });
  assert.equal(neutral.choices[0].text, base.choices[0].text);
  await assert.rejects(complete(prompt, { repetition_penalty: 0 }), expect400('repetition_penalty'));
  await assert.rejects(complete(prompt, { logit_bias: { 99999999: 1 } }), expect400('logit_bias'));
  await assert.rejects(complete(prompt, { logit_bias: { abc: 1 } }), expect400('logit_bias'));
});

test('prompt_logprobs and echo + logprobs give each prompt token a logprob', async () => {
  const prompt = 'def add(a, b):\n    return';
  const ids = await tokenize(prompt);
  const r = await complete(prompt, { max_tokens: 2, prompt_logprobs: 2 });
  const plp = r.choices[0].prompt_logprobs;
  assert.equal(plp.length, ids.length);
  assert.equal(plp[0], null);
  for (let i = 1; i < ids.length; i++) {
    const entry = plp[i][String(ids[i])];
    assert.ok(entry, `prompt token ${i} is in its entry`);
    assert.ok(entry.logprob <= 0 && entry.rank >= 1 && typeof entry.decoded_token === 'string');
  }
  // The prompt logprob of the last token equals what a completion of the prefix reports for it.
  const prefix = await complete(ids.slice(0, -1), { max_tokens: 1, logprobs: 1, allowed_token_ids: [ids.at(-1)] });
  assert.ok(Math.abs(prefix.choices[0].logprobs.token_logprobs[0] - plp.at(-1)[String(ids.at(-1))].logprob) < 1e-4);

  const echo = await complete(prompt, { max_tokens: 3, echo: true, logprobs: 1 });
  const lp = echo.choices[0].logprobs;
  assert.equal(lp.tokens.length, ids.length + 3);
  assert.equal(lp.token_logprobs[0], null);
  for (let i = 1; i < ids.length; i++) assert.ok(Math.abs(lp.token_logprobs[i] - plp[i][String(ids[i])].logprob) < 1e-4);
  assert.ok(echo.choices[0].text.startsWith(prompt));
  const stream = await client.completions.create({ model, prompt, max_tokens: 3, ...greedy, echo: true, logprobs: 1, stream: true });
  let text = '';
  const tokens = [];
  for await (const chunk of stream)
    for (const c of chunk.choices) (text += c.text), tokens.push(...(c.logprobs?.tokens ?? []));
  assert.equal(text, echo.choices[0].text, 'streamed echo + logprobs equals the non-streamed one');
  assert.deepEqual(tokens, lp.tokens);

  const chat = await postJson(`${server.url}/v1/chat/completions`, {
    model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 2, prompt_logprobs: 0,
  });
  assert.equal(chat.status, 200);
  assert.equal(chat.json.prompt_logprobs[0], null);
  assert.equal(chat.json.prompt_logprobs.length, chat.json.usage.prompt_tokens);
  await assert.rejects(complete(prompt, { prompt_logprobs: 1, stream: true }), expect400('prompt_logprobs'));
});

test('best_of, use_beam_search, truncate_prompt_tokens, unknown fields', async () => {
  const ok = await complete('x = 1\n', { max_tokens: 2, n: 2, best_of: 2 });
  assert.equal(ok.choices.length, 2);
  await assert.rejects(complete('x = 1\n', { best_of: 3 }), expect400('best_of'));
  await assert.rejects(complete('x = 1\n', { use_beam_search: true }), expect400('use_beam_search'));
  await assert.rejects(complete('x = 1\n', { suffix: '\nend' }), expect400('suffix'));
  const long = 'value = compute(value)\n'.repeat(20);
  const t = await complete(long, { max_tokens: 2, truncate_prompt_tokens: 10 });
  assert.equal(t.usage.prompt_tokens, 10);
  const ids = await tokenize(long);
  const same = await complete(ids.slice(-10), { max_tokens: 2 });
  assert.equal(t.choices[0].text, same.choices[0].text, 'the last 10 tokens are kept');
  // Unknown fields are ignored (with a warning in the log), as vLLM does.
  const unknown = await complete('x = 1\n', { max_tokens: 2, some_future_field: { a: 1 } });
  assert.equal(unknown.choices.length, 1);
  assert.match(server.log(), /ignored unknown field\(s\): some_future_field/);
});

test('chat: add_generation_prompt and continue_final_message', async () => {
  const messages = [
    { role: 'user', content: 'Write a function that adds two numbers.' },
    { role: 'assistant', content: 'def add(a, b):' },
  ];
  const rendered = await postJson(`${server.url}/tokenize`, { model, messages, add_generation_prompt: false, return_token_strs: false });
  const cont = await client.chat.completions.create({
    model, messages, max_tokens: 8, ...greedy, add_generation_prompt: false, continue_final_message: true,
  });
  // Continuing: the prompt ends with the assistant's partial text (the turn is not closed).
  assert.ok(cont.usage.prompt_tokens < rendered.json.count, 'the end-of-turn marker was cut');
  const raw = await postJson(`${server.url}/detokenize`, { model, tokens: rendered.json.tokens.slice(0, cont.usage.prompt_tokens) });
  assert.ok(raw.json.prompt.endsWith('def add(a, b):'), raw.json.prompt);
  await assert.rejects(
    client.chat.completions.create({ model, messages, max_tokens: 2, continue_final_message: true }),
    expect400('continue_final_message'),
  );
  const noGen = await client.chat.completions.create({
    model, messages: [messages[0]], max_tokens: 2, ...greedy, add_generation_prompt: false,
  });
  const withGen = await client.chat.completions.create({ model, messages: [messages[0]], max_tokens: 2, ...greedy });
  assert.ok(noGen.usage.prompt_tokens < withGen.usage.prompt_tokens);
});

test('max_tokens -1, numeric overflow and oversized bodies are 4xx', async () => {
  await assert.rejects(complete('x', { max_tokens: -1 }), expect400('max_tokens'));
  await assert.rejects(
    client.chat.completions.create({ model, messages: [{ role: 'user', content: 'x' }], max_completion_tokens: -1 }),
    expect400('max_completion_tokens'),
  );
  const overflow = await postJson(`${server.url}/v1/completions`, `{"model":"${model}","prompt":"x","max_tokens":2,"foo":1e400}`);
  assert.equal(overflow.status, 400);
  assert.equal(overflow.json.error.type, 'invalid_request_error');
  // 3.75 MB: over the default limit (1 MiB at --max-model-len 512); refused from its
  // Content-Length, and the server's memory does not grow with it.
  const before = rssKb(server.proc.pid);
  for (let i = 0; i < 4; i++) {
    const huge = await postJson(`${server.url}/v1/completions`, { model, prompt: 'a b c '.repeat(625000) });
    assert.equal(huge.status, 413);
  }
  const grown = rssKb(server.proc.pid) - before;
  assert.ok(grown < 64 * 1024, `RSS grew by ${grown} kB`);
});

test('a non-streaming request whose client disconnects is aborted', async () => {
  const key = m('vllm:request_success_total', ',finished_reason="abort"');
  const gen = m('vllm:generation_tokens_total');
  const before = parseMetrics((await metrics(server.url)).text);
  const controller = new AbortController();
  const pending = client.completions.create(
    { model, prompt: 'def worker():\n', max_tokens: 480, ignore_eos: true, ...greedy },
    { signal: controller.signal },
  );
  // Hang up as soon as the request is running: 480 tokens take ~450 ms on the CPU but far less on a
  // GPU, so a fixed delay would either come too late there or before the request is scheduled.
  for (let i = 0; i < 400; i++) {
    if (parseMetrics((await metrics(server.url)).text)[m('vllm:num_requests_running')] > 0) break;
    await new Promise((r) => setTimeout(r, 5));
  }
  controller.abort();
  await assert.rejects(pending, (e) => e instanceof OpenAI.APIUserAbortError || e.name === 'AbortError');
  let after;
  for (let i = 0; i < 50; i++) {
    after = parseMetrics((await metrics(server.url)).text);
    if (after[key] > before[key] && after[m('vllm:num_requests_running')] === 0) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(after[key], before[key] + 1, 'counted as abort');
  assert.equal(after[m('vllm:request_success_total', ',finished_reason="length"')],
    before[m('vllm:request_success_total', ',finished_reason="length"')], 'not run to length');
  assert.equal(after[m('vllm:num_requests_running')], 0);
  assert.ok(after[gen] - before[gen] < 480, `stopped early: ${after[gen] - before[gen]} tokens`);
});

test('CORS preflight and response headers; /version; tandem --version', async () => {
  const pre = await fetch(`${server.url}/v1/chat/completions`, {
    method: 'OPTIONS',
    headers: { Origin: 'http://app.test', 'Access-Control-Request-Method': 'POST', 'Access-Control-Request-Headers': 'content-type,authorization' },
  });
  assert.equal(pre.status, 200);
  assert.equal(pre.headers.get('access-control-allow-origin'), '*');
  assert.match(pre.headers.get('access-control-allow-methods'), /POST/);
  assert.equal(pre.headers.get('access-control-allow-headers'), 'content-type,authorization');
  const models = await fetch(`${server.url}/v1/models`, { headers: { Origin: 'http://app.test' } });
  assert.equal(models.headers.get('access-control-allow-origin'), '*');
  const version = await (await fetch(`${server.url}/version`)).json();
  assert.match(version.version, /^\d+\.\d+\.\d+/);
  const cli = spawnSync(BINARY, ['--version'], { encoding: 'utf8' });
  assert.equal(cli.status, 0);
  assert.ok(cli.stdout.includes(version.version), cli.stdout);
});

test('metrics: vLLM request histograms, preemptions, iteration tokens; prefix caching on by default', async () => {
  const prompt = '# shared prefix for the cache\n'.repeat(4);
  await complete(prompt, { max_tokens: 2 });
  await complete(prompt, { max_tokens: 2 });
  const { text } = await metrics(server.url);
  const v = parseMetrics(text);
  for (const name of [
    'vllm:num_preemptions_total', 'vllm:gpu_cache_usage_perc', 'vllm:iteration_tokens_total_bucket',
    'vllm:request_queue_time_seconds_bucket', 'vllm:request_prefill_time_seconds_bucket',
    'vllm:request_decode_time_seconds_bucket', 'vllm:request_prompt_tokens_bucket', 'vllm:request_generation_tokens_bucket',
  ])
    assert.ok(text.includes(`\n${name}{`), name);
  assert.ok(v[m('vllm:request_queue_time_seconds_count')] > 0);
  assert.ok(v[m('vllm:request_prompt_tokens_count')] > 0);
  assert.ok(v[m('vllm:iteration_tokens_total_count')] > 0);
  assert.equal(v[m('vllm:gpu_cache_usage_perc')], v[m('vllm:kv_cache_usage_perc')]);
  assert.ok(v[m('vllm:prefix_cache_hits_total')] > 0, 'prefix caching is on without a flag');
});

test('preemption under KV pressure is counted and logged', async () => {
  // 18 blocks of 16 tokens (8 KiB per token): one 256-token sequence fits, six growing ones do not.
  const small = await startServer(['--max-model-len', '256', '--kv-cache-memory', String(8192 * 16 * 18), '--served-model-name', model]);
  try {
    const c = small.client();
    const outs = await Promise.all(Array.from({ length: 6 }, (_, i) =>
      c.completions.create({ model, prompt: `def job_${i}():\n`, max_tokens: 120, ignore_eos: true, ...greedy })));
    for (const o of outs) assert.equal(o.usage.completion_tokens, 120);
    const v = parseMetrics((await metrics(small.url)).text);
    assert.ok(v[m('vllm:num_preemptions_total')] > 0);
    assert.match(small.log(), /preempted \(recompute\): not enough KV cache space/);
  } finally {
    assert.equal(await small.stop(), 0);
  }
});

// Runs `tandem serve` expecting it to fail; resolves with {code, ms, stderr}.
function serveFails(args) {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const proc = spawn(BINARY, ['serve', '--host', '127.0.0.1', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    proc.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => proc.kill('SIGKILL'), 20000);
    proc.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, ms: Date.now() - t0, stderr });
    });
  });
}

test('a busy port or a bad flag fails before the model loads', async () => {
  const blocker = net.createServer();
  await new Promise((r) => blocker.listen(0, '127.0.0.1', r));
  const port = blocker.address().port;
  try {
    const busy = await serveFails(['--port', String(port)]);
    assert.notEqual(busy.code, 0);
    assert.match(busy.stderr, /cannot listen/);
    assert.ok(busy.ms < 1500, `${busy.ms} ms`);
  } finally {
    blocker.close();
  }
  for (const args of [['--dtype', 'flaot16'], ['--speculative-config', '{"num_speculative_tokens":'], ['--allowed-origins', 'not-json']]) {
    const r = await serveFails(['--port', '0', ...args]);
    assert.notEqual(r.code, 0, args.join(' '));
    assert.ok(r.ms < 1500, `${args.join(' ')}: ${r.ms} ms`);
    assert.doesNotMatch(r.stderr, /listening on/);
  }
});
