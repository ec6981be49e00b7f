// Images through the OpenAI API with the official openai client: a chat turn with a base64 image on
// the vision fixture (tests/fixtures/vision/gemma4-vision: a tiny Gemma 4 with a vision tower and
// transformers goldens), streaming and not; greedy output equals transformers' continuation for the
// same prompt; bad images get clear 400s and the server keeps serving.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServer, postJson } from './server.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const fixtures = join(here, '..', 'fixtures', 'vision');
const modelDir = join(fixtures, 'gemma4-vision');
const have = existsSync(join(modelDir, 'tokenizer.json'));
const skip = have ? false : 'tests/fixtures/vision has not been generated (tools/make_vision_fixtures.py)';

let server;
let client;

const imageFile = (letter) => {
  const name = readdirSync(join(fixtures, 'images')).find((f) => f.startsWith(`${letter}_`));
  return join(fixtures, 'images', name);
};
const dataUrl = (path, type) => `data:${type};base64,${readFileSync(path).toString('base64')}`;
const imagePart = (url) => ({ type: 'image_url', image_url: { url } });

before(async () => {
  if (!have) return;
  server = await startServer([modelDir, '--max-model-len', '1024', '--served-model-name', 'vision',
    '--max-num-batched-tokens', '512', '--mm-processor-kwargs', '{"max_soft_tokens": 70}',
    '--limit-mm-per-prompt', '{"image": 4}', '--allowed-local-media-path', join(fixtures, 'images')]);
  client = server.client();
});

after(async () => {
  if (!server) return;
  assert.equal(await server.stop(), 0, 'tandem serve exits 0 on SIGTERM');
});

const jpeg = () => dataUrl(imageFile('b'), 'image/jpeg');
const messages = (url) => [{ role: 'user', content: [{ type: 'text', text: 'Describe' }, imagePart(url)] }];

test('a chat turn with a base64 image, non-streaming and streaming, gives the same greedy text', { skip }, async () => {
  const r = await client.chat.completions.create({ model: 'vision', messages: messages(jpeg()), max_tokens: 12, temperature: 0 });
  assert.equal(r.choices.length, 1);
  assert.equal(r.usage.completion_tokens, 12);
  // <|image> + N soft tokens + <image|> for N ≤ 70 at this budget, plus the chat text around it.
  assert.ok(r.usage.prompt_tokens > 20 && r.usage.prompt_tokens < 120, `prompt_tokens ${r.usage.prompt_tokens}`);
  const stream = await client.chat.completions.create({
    model: 'vision', messages: messages(jpeg()), max_tokens: 12, temperature: 0, stream: true,
    stream_options: { include_usage: true },
  });
  let text = '';
  let usage = null;
  for await (const chunk of stream) {
    if (chunk.choices[0]?.delta?.content) text += chunk.choices[0].delta.content;
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(text, r.choices[0].message.content);
  assert.equal(usage.prompt_tokens, r.usage.prompt_tokens);
});

test('the same image by file:// under --allowed-local-media-path gives the same answer', { skip }, async () => {
  const a = await client.chat.completions.create({ model: 'vision', messages: messages(jpeg()), max_tokens: 8, temperature: 0 });
  const b = await client.chat.completions.create({
    model: 'vision', messages: messages(`file://${imageFile('b')}`), max_tokens: 8, temperature: 0,
  });
  assert.equal(b.choices[0].message.content, a.choices[0].message.content);
});

test('different images (PNG, WebP, GIF) reach the model as different inputs', { skip }, async () => {
  // The tiny fixture may pick the same greedy tokens for every image; the first token's
  // log-probability still tells the images apart.
  const firsts = new Set();
  for (const [letter, type] of [['a', 'image/png'], ['c', 'image/webp'], ['f', 'image/gif']]) {
    const r = await client.chat.completions.create({
      model: 'vision', messages: messages(dataUrl(imageFile(letter), type)), max_tokens: 1, temperature: 0,
      logprobs: true, top_logprobs: 3, skip_special_tokens: false,
    });
    firsts.add(JSON.stringify(r.choices[0].logprobs.content[0].top_logprobs.map((t) => t.logprob.toFixed(5))));
  }
  assert.equal(firsts.size, 3, 'two different images gave identical first-token log-probabilities');
});

async function expect400(body, pattern) {
  const r = await postJson(`${server.url}/v1/chat/completions`, { model: 'vision', max_tokens: 4, ...body });
  assert.equal(r.status, 400, r.text);
  assert.match(r.json.error.message, pattern);
  assert.equal(r.json.error.type, 'invalid_request_error');
}

test('bad images get clear 400s and the server keeps serving', { skip }, async () => {
  const png = readFileSync(imageFile('a'));
  const truncated = `data:image/png;base64,${png.subarray(0, png.length >> 1).toString('base64')}`;
  await expect400({ messages: messages(truncated) }, /truncated|corrupt/);
  await expect400({ messages: messages(`data:image/png;base64,${Buffer.from('not an image at all').toString('base64')}`) },
    /not a JPEG, PNG, GIF or WebP/);
  await expect400({ messages: messages('data:text/plain;base64,aGVsbG8=') }, /not an image type/);
  // Zero-sized: a PNG whose header says 0 × 0 pixels.
  const zero = Buffer.from('89504e470d0a1a0a0000000d4948445200000000000000000802000000', 'hex');
  await expect400({ messages: messages(`data:image/png;base64,${zero.toString('base64')}`) }, /PNG|pixel/);
  await expect400({ messages: messages('https://example.com/cat.png') }, /does not fetch/);
  await expect400({ messages: messages('file:///etc/passwd') }, /allowed-local-media-path/);
  await expect400({ messages: [{ role: 'user', content: [{ type: 'input_audio', input_audio: { data: 'AAAA', format: 'wav' } }] }] },
    /audio input is not supported/);
  const hundred = Array.from({ length: 100 }, () => imagePart(jpeg()));
  await expect400({ messages: [{ role: 'user', content: hundred }] }, /at most 4 images/);
  const r = await client.chat.completions.create({ model: 'vision', messages: messages(jpeg()), max_tokens: 4, temperature: 0 });
  assert.equal(r.usage.completion_tokens, 4);
});
