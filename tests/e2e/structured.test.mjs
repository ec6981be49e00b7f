// Structured outputs through the official openai client against `tandem serve` on the bundled model
// (with its drafter: speculative decoding on). The model was trained on Python, never on JSON, so its
// outputs are odd; they must still match: every spelling vLLM accepts (response_format,
// structured_outputs, guided_*) on both endpoints, streamed and not, and bad constraints are 400s
// naming the field.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { startServer } from './server.mjs';

let server;
let client;
const model = 'demo';

before(async () => {
  server = await startServer(['--max-model-len', '512', '--served-model-name', model, '--reasoning-parser', 'gemma4']);
  client = server.client();
});

after(async () => {
  assert.equal(await server?.stop(), 0);
});

// A validator for the JSON Schema subset these tests use.
function validate(v, s, path = '$') {
  if (s.enum) assert.ok(s.enum.some((e) => JSON.stringify(e) === JSON.stringify(v)), `${path}: ${JSON.stringify(v)} not in enum`);
  if (s.anyOf) {
    assert.ok(s.anyOf.some((b) => { try { validate(v, b, path); return true; } catch { return false; } }), `${path}: no anyOf branch`);
  }
  const types = s.type === undefined ? [] : [].concat(s.type);
  if (types.length) {
    const ok = types.some((t) => (t === 'null' ? v === null : t === 'integer' ? Number.isInteger(v) : t === 'array'
      ? Array.isArray(v) : t === 'object' ? v !== null && typeof v === 'object' && !Array.isArray(v) : typeof v === t));
    assert.ok(ok, `${path}: ${JSON.stringify(v)} is not ${types}`);
  }
  if (typeof v === 'string') {
    if (s.maxLength !== undefined) assert.ok([...v].length <= s.maxLength, `${path}: maxLength`);
    if (s.pattern) assert.match(v, new RegExp(s.pattern), path);
  }
  if (Array.isArray(v)) {
    if (s.minItems !== undefined) assert.ok(v.length >= s.minItems, `${path}: minItems`);
    if (s.maxItems !== undefined) assert.ok(v.length <= s.maxItems, `${path}: maxItems`);
    if (s.items) v.forEach((x, i) => validate(x, s.items, `${path}[${i}]`));
  }
  if (v !== null && typeof v === 'object' && !Array.isArray(v)) {
    for (const k of s.required ?? []) assert.ok(k in v, `${path}: missing ${k}`);
    for (const [k, x] of Object.entries(v)) {
      if (s.properties?.[k]) validate(x, s.properties[k], `${path}.${k}`);
      else assert.notEqual(s.additionalProperties, false, `${path}: extra property ${k}`);
    }
  }
}

// Bounded (strings with maxLength or a bounded pattern, enums, booleans, maxItems, no additional
// properties): without whitespace its output always closes; the untrained model spells numbers
// and unbounded strings forever, and loves indentation.
const schema = {
  type: 'object',
  properties: {
    name: { type: 'string', maxLength: 10 },
    kind: { enum: ['function', 'class', 'module'] },
    exported: { type: 'boolean' },
    tags: { type: 'array', items: { type: 'string', pattern: '^[a-z]{1,6}$' }, maxItems: 2 },
    parent: { anyOf: [{ type: 'null' }, { type: 'string', maxLength: 6 }] },
  },
  required: ['name', 'kind', 'exported'],
  additionalProperties: false,
};
const messages = [{ role: 'user', content: 'Describe the function def add(a, b): return a + b as JSON.' }];

// Each spelling with the check its output must pass (when the output finished; "length" outputs
// are prefixes and are only counted).
const spellings = [
  { name: 'response_format json_schema', body: { response_format: { type: 'json_schema', json_schema: { name: 'd', schema, strict: true } } },
    check: (t) => validate(JSON.parse(t), schema) },
  { name: 'structured_outputs.json (compact)', body: { structured_outputs: { json: schema, disable_any_whitespace: true } },
    check: (t) => validate(JSON.parse(t), schema) },
  { name: 'guided_json', body: { guided_json: schema }, check: (t) => validate(JSON.parse(t), schema) },
  { name: 'response_format json_object', body: { response_format: { type: 'json_object' } },
    check: (t) => assert.equal(typeof JSON.parse(t), 'object') },
  { name: 'structured_outputs.regex', body: { structured_outputs: { regex: '(def|class) [a-z_]{1,10}\\(\\):' } },
    check: (t) => assert.match(t, /^(def|class) [a-z_]{1,10}\(\):$/) },
  { name: 'guided_regex', body: { guided_regex: '[0-9]{3}-[0-9]{4}' }, check: (t) => assert.match(t, /^[0-9]{3}-[0-9]{4}$/) },
  { name: 'structured_outputs.choice', body: { structured_outputs: { choice: ['yes', 'no', 'maybe'] } },
    check: (t) => assert.ok(['yes', 'no', 'maybe'].includes(t), t) },
  { name: 'guided_choice', body: { guided_choice: ['return a + b', 'pass'] }, check: (t) => assert.ok(['return a + b', 'pass'].includes(t), t) },
  { name: 'structured_outputs.grammar', body: { structured_outputs: { grammar: 'root ::= "x = " [0-9]{1,4} (" + " [0-9]{1,4}){0,2}' } },
    check: (t) => assert.match(t, /^x = [0-9]{1,4}( \+ [0-9]{1,4}){0,2}$/) },
  { name: 'guided_grammar', body: { guided_grammar: 'root ::= ("a" | "b")+ "!"', guided_decoding_backend: 'xgrammar' },
    check: (t) => assert.match(t, /^[ab]+!$/) },
];

test('every spelling constrains chat output (greedy and sampled, streamed and not)', async () => {
  let finished = 0;
  for (const s of spellings) {
    for (const temperature of [0, 1]) {
      const body = { model, messages, max_tokens: 160, temperature, seed: 11, ...s.body };
      const r = await client.chat.completions.create(body);
      const c = r.choices[0];
      assert.ok(['stop', 'length'].includes(c.finish_reason), `${s.name}: ${c.finish_reason}`);
      if (c.finish_reason === 'stop') {
        finished++;
        try {
          s.check(c.message.content);
        } catch (e) {
          throw new Error(`${s.name} T=${temperature}: ${e.message}\noutput: ${c.message.content}`);
        }
      }
      // The stream carries the same text (same seed).
      let streamed = '';
      let finish = null;
      for await (const chunk of await client.chat.completions.create({ ...body, stream: true })) {
        for (const ch of chunk.choices) {
          streamed += ch.delta.content ?? '';
          if (ch.finish_reason) finish = ch.finish_reason;
        }
      }
      assert.equal(streamed, c.message.content, s.name);
      assert.equal(finish, c.finish_reason, s.name);
    }
  }
  // The bounded ones (regex, choice, the first EBNF, compact JSON) always finish: 12 at least.
  assert.ok(finished >= 12, `only ${finished} outputs finished`);
});

test('completions: constrained too, per prompt and choice', async () => {
  const r = await client.completions.create({
    model, prompt: ['def add(a, b):\n    ', 'import os\n'], n: 2, max_tokens: 120, temperature: 0.8, seed: 3,
    response_format: { type: 'json_schema', json_schema: { name: 'd', schema } },
  });
  assert.equal(r.choices.length, 4);
  for (const c of r.choices) if (c.finish_reason === 'stop') validate(JSON.parse(c.text), schema);
  const choice = await client.completions.create({ model, prompt: 'x = ', max_tokens: 8, guided_choice: ['1', '2'] });
  assert.ok(['1', '2'].includes(choice.choices[0].text));
  assert.equal(choice.choices[0].finish_reason, 'stop');
});

test('speculation per request: constrained greedy output is the same with and without it', async () => {
  const body = { model, messages, max_tokens: 96, temperature: 0, guided_json: schema };
  const spec = await client.chat.completions.create(body);
  const plain = await client.chat.completions.create({ ...body, speculative: { num_speculative_tokens: 0 } });
  assert.equal(spec.choices[0].message.content, plain.choices[0].message.content);
});

test('bad constraints are 400s naming the field', async () => {
  const cases = [
    [{ response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'object', uniqueItems: true } } } },
      'response_format', /uniqueItems/],
    [{ response_format: { type: 'xml' } }, 'response_format', /response_format/],
    [{ structured_outputs: { regex: '(a' } }, 'structured_outputs.regex', /regex/],
    [{ structured_outputs: { regex: 'a', choice: ['a'] } }, 'structured_outputs', /only use one kind/],
    [{ guided_json: { type: 'object', allOf: [] } }, 'guided_json', /allOf/],
    [{ guided_grammar: 'rot ::= "a"' }, 'guided_grammar', /root/],
    [{ guided_choice: [] }, 'guided_choice', /non-empty/],
    [{ guided_regex: 'a', guided_choice: ['a'] }, 'guided_choice', /only one structured output constraint/],
    [{ guided_regex: 'a', min_tokens: 2 }, 'min_tokens', /min_tokens/],
  ];
  for (const [extra, param, pattern] of cases) {
    await assert.rejects(client.chat.completions.create({ model, messages, max_tokens: 4, ...extra }), (e) => {
      assert.ok(e instanceof OpenAI.BadRequestError, `${JSON.stringify(extra)}: expected a 400, got ${e}`);
      assert.equal(e.param, param, JSON.stringify(extra));
      assert.match(e.message, pattern);
      return true;
    });
  }
});
