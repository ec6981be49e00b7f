// --api-key and graceful shutdown.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { startServer } from './server.mjs';

test('VLLM_API_KEY in the environment is honoured like --api-key', async () => {
  const server = await startServer([], { env: { VLLM_API_KEY: 'env-secret' } });
  try {
    await assert.rejects(server.client({ apiKey: 'wrong' }).models.list(), (e) => e.status === 401);
    const models = await server.client({ apiKey: 'env-secret' }).models.list();
    assert.equal(models.data.length, 1);
  } finally {
    assert.equal(await server.stop(), 0);
  }
});

test('--api-key: Bearer required on /v1/*, health and metrics stay open', async () => {
  const server = await startServer(['--api-key', 'tandem-secret']);
  try {
    const anon = server.client({ apiKey: 'wrong' });
    await assert.rejects(anon.models.list(), (e) => e instanceof OpenAI.AuthenticationError && e.status === 401);
    const noHeader = await fetch(`${server.url}/v1/models`);
    assert.equal(noHeader.status, 401);
    assert.equal((await noHeader.json()).error.code, 'invalid_api_key');
    const ok = server.client({ apiKey: 'tandem-secret' });
    const models = await ok.models.list();
    assert.equal(models.data[0].id, 'tandem-code-demo', 'default served name is the directory name');
    const r = await ok.completions.create({ model: 'tandem-code-demo', prompt: 'import re\n', max_tokens: 4, temperature: 0 });
    assert.equal(r.choices.length, 1);
    assert.equal((await fetch(`${server.url}/health`)).status, 200);
    assert.equal((await fetch(`${server.url}/metrics`)).status, 200);
  } finally {
    assert.equal(await server.stop(), 0);
  }
});

test('SIGTERM during a stream: the stream ends with finish_reason abort and the server exits 0', async () => {
  const server = await startServer(['--no-enable-prefix-caching']);
  const client = server.client();
  const stream = await client.completions.create({
    model: 'tandem-code-demo', prompt: 'def run():\n', max_tokens: 1500, ignore_eos: true, temperature: 0, stream: true,
  });
  let chunks = 0;
  let stopped = null;
  let finish = null;
  let done = false;
  const reading = (async () => {
    try {
      for await (const chunk of stream) {
        if (++chunks === 3) stopped = server.stop();
        for (const c of chunk.choices) finish = c.finish_reason ?? finish;
      }
      done = true;  // the client saw [DONE]
    } catch {}
  })();
  await reading;
  const code = await stopped;
  assert.equal(code, 0);
  assert.ok(chunks >= 3);
  assert.equal(finish, 'abort', 'the last chunk says the stream was cut');
  assert.ok(done, 'the stream ends with [DONE]');
  assert.match(server.log(), /SIGTERM received/);
  assert.match(server.log(), /server stopped/);
});
