// Tool calling and reasoning flags through the official openai client against `tandem serve` on the
// bundled model. The bundled model was not trained for tools (it never emits a call on its own), so
// these tests check the request handling: tools and tool_choice accepted or rejected as vLLM does, a
// history with tool calls and tool results rendered (Gemma 4's markers in the prompt) and answered,
// and the shape of the responses; tool_choice "required" / named force calls by constrained decoding,
// and those come back parsed. Parsing of calls is covered by tests/server (tool_parser_test, http_test).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import OpenAI from 'openai';
import { BINARY, startServer, postJson } from './server.mjs';

let server;
let client;
const model = 'demo';

const tools = [
  {
    type: 'function',
    function: {
      name: 'get_weather',
      description: 'Current weather of a city',
      parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
    },
  },
  { type: 'function', function: { name: 'get_time', parameters: { type: 'object', properties: {} } } },
];

const history = [
  { role: 'user', content: 'What is the weather in Paris?' },
  {
    role: 'assistant',
    content: null,
    tool_calls: [
      { id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city": "Paris"}' } },
    ],
  },
  { role: 'tool', tool_call_id: 'call_1', content: [{ type: 'text', text: 'sunny, 21 C' }] },
];

before(async () => {
  server = await startServer([
    '--max-model-len', '512', '--served-model-name', model,
    '--enable-auto-tool-choice', '--tool-call-parser', 'gemma4', '--reasoning-parser', 'gemma4',
  ]);
  client = server.client();
});

after(async () => {
  assert.equal(await server?.stop(), 0);
});

async function rejects400(body, pattern) {
  await assert.rejects(
    client.chat.completions.create({ model, max_tokens: 4, messages: [{ role: 'user', content: 'hi' }], ...body }),
    (e) => {
      assert.ok(e instanceof OpenAI.BadRequestError, `expected a 400, got ${e}`);
      assert.match(e.message, pattern);
      return true;
    },
  );
}

test('serve: unknown parser names and --enable-auto-tool-choice alone are refused at startup', () => {
  const run = (args) => spawnSync(BINARY, ['serve', '--port', '0', ...args], { encoding: 'utf8', timeout: 60000 });
  let r = run(['--enable-auto-tool-choice', '--tool-call-parser', 'hermes']);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /invalid tool call parser: hermes \(chose from \{ gemma4 \}\)/);
  r = run(['--enable-auto-tool-choice']);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /--enable-auto-tool-choice requires --tool-call-parser/);
  r = run(['--reasoning-parser', 'nope']);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /invalid reasoning parser: nope/);
});

test('tools with tool_choice auto (the default): a valid chat.completion', async () => {
  for (const tool_choice of [undefined, 'auto', 'none']) {
    const r = await client.chat.completions.create({
      model, messages: [{ role: 'user', content: 'What is the weather in Paris?' }], tools, tool_choice,
      max_tokens: 16, temperature: 0,
    });
    assert.equal(r.object, 'chat.completion');
    const c = r.choices[0];
    assert.equal(c.message.role, 'assistant');
    assert.ok(Array.isArray(c.message.tool_calls), 'tool_calls is a list when tools were given');
    // This model never calls a tool; if it did, each call would have this shape.
    for (const call of c.message.tool_calls) {
      assert.match(call.id, /^chatcmpl-tool-/);
      assert.equal(call.type, 'function');
      JSON.parse(call.function.arguments);
    }
    assert.ok(['stop', 'length', 'tool_calls'].includes(c.finish_reason));
    assert.equal(c.finish_reason === 'tool_calls', c.message.tool_calls.length > 0);
    assert.ok(typeof c.message.content === 'string' || c.message.content === null);
    assert.ok('reasoning' in c.message && 'reasoning_content' in c.message, '--reasoning-parser adds both fields');
  }
});

test('streaming with tools: role first, deltas with content (or tool_calls), one finish_reason', async () => {
  const stream = await client.chat.completions.create({
    model, messages: [{ role: 'user', content: 'def add(a, b):' }], tools, max_tokens: 16, temperature: 0,
    stream: true,
  });
  let role = null;
  let content = '';
  let finishes = 0;
  for await (const chunk of stream) {
    for (const c of chunk.choices) {
      if (c.delta.role) role = c.delta.role;
      if (c.delta.content) content += c.delta.content;
      for (const t of c.delta.tool_calls ?? []) assert.equal(typeof t.index, 'number');
      if (c.finish_reason) finishes++;
    }
  }
  assert.equal(role, 'assistant');
  assert.equal(finishes, 1);
  const whole = await client.chat.completions.create({
    model, messages: [{ role: 'user', content: 'def add(a, b):' }], tools, max_tokens: 16, temperature: 0,
  });
  assert.equal(content, whole.choices[0].message.content ?? '');
});

test('tool_choice: invalid values and unknown functions get vLLM-style 400s', async () => {
  await rejects400({ tools, tool_choice: 'sometimes' }, /Invalid value for `tool_choice`: sometimes!/);
  await rejects400({ tool_choice: 'auto' }, /When using `tool_choice`, `tools` must be set\./);
  await rejects400(
    { tools, tool_choice: { type: 'function', function: { name: 'get_stock' } } },
    /The tool specified in `tool_choice` does not match any of the specified `tools`/,
  );
  await rejects400({ tools, tool_choice: { type: 'function', function: {} } }, /Expected field `name`/);
  await rejects400({ tools: [{ type: 'function', function: {} }] }, /tools\[0\]\.function\.name/);
});

// Tools whose arguments are bounded (strings with maxLength, enums, booleans): the untrained model
// spells forever inside an unbounded string or number, but bounded arguments always close.
const boundedTools = [
  {
    type: 'function',
    function: {
      name: 'get_weather',
      parameters: {
        type: 'object',
        properties: { city: { type: 'string', maxLength: 12 }, unit: { type: 'string', enum: ['C', 'F'] } },
        required: ['city'],
      },
    },
  },
  {
    type: 'function',
    function: {
      name: 'get_forecast',
      parameters: {
        type: 'object',
        properties: { city: { type: 'string', maxLength: 16 }, hourly: { type: 'boolean' } },
        required: ['city', 'hourly'],
      },
    },
  },
  { type: 'function', function: { name: 'get_time', parameters: { type: 'object', properties: {} } } },
];

// The arguments against the tool's schema (the subset used here): required keys, declared types.
function checkArguments(args, parameters) {
  for (const key of parameters.required ?? []) assert.ok(key in args, `missing ${key} in ${JSON.stringify(args)}`);
  for (const [key, value] of Object.entries(args)) {
    const p = parameters.properties[key];
    assert.ok(p, `undeclared ${key}`);
    assert.equal(typeof value, p.type, `${key}: ${JSON.stringify(value)}`);
    if (p.maxLength !== undefined) assert.ok([...value].length <= p.maxLength, `${key}: ${value}`);
    if (p.enum) assert.ok(p.enum.includes(value), `${key}: ${value}`);
  }
}

test('tool_choice named: constrained decoding returns a parsed call whose arguments follow the schema', async () => {
  for (const stream of [false, true]) {
    for (const temperature of [0, 1]) {
      const body = {
        model, messages: [{ role: 'user', content: 'What is the weather in Paris?' }], tools: boundedTools,
        max_tokens: 96, temperature, seed: 5, tool_choice: { type: 'function', function: { name: 'get_weather' } },
      };
      let calls, finish, content;
      if (!stream) {
        const r = await client.chat.completions.create(body);
        calls = r.choices[0].message.tool_calls, finish = r.choices[0].finish_reason, content = r.choices[0].message.content;
      } else {
        calls = [], finish = null, content = '';
        for await (const chunk of await client.chat.completions.create({ ...body, stream: true })) {
          for (const c of chunk.choices) {
            content += c.delta.content ?? '';
            for (const t of c.delta.tool_calls ?? []) {
              if (t.id) calls[t.index] = { id: t.id, type: t.type, function: { name: t.function.name, arguments: '' } };
              calls[t.index].function.arguments += t.function?.arguments ?? '';
            }
            if (c.finish_reason) finish = c.finish_reason;
          }
        }
      }
      assert.equal(finish, 'stop', 'vLLM keeps the engine finish_reason for a named function');
      assert.equal(calls.length, 1, JSON.stringify(calls));
      assert.equal(content ?? '', '');
      assert.equal(calls[0].function.name, 'get_weather');
      assert.match(calls[0].id, /^chatcmpl-tool-/);
      checkArguments(JSON.parse(calls[0].function.arguments), boundedTools[0].function.parameters);
    }
  }
});

test('tool_choice required: parsed calls of the given tools, finish_reason tool_calls', async () => {
  for (const parallel_tool_calls of [undefined, false]) {
    for (const temperature of [0, 1]) {
      const r = await client.chat.completions.create({
        model, messages: [{ role: 'user', content: 'Forecast for Oslo?' }], tools: boundedTools, tool_choice: 'required',
        parallel_tool_calls, max_tokens: 128, temperature, seed: 9,
      });
      const c = r.choices[0];
      assert.ok(c.message.tool_calls.length >= 1, JSON.stringify(c));
      // One call always ends; several may run to max_tokens (then the complete calls are returned).
      if (parallel_tool_calls === false) {
        assert.equal(c.message.tool_calls.length, 1);
        assert.equal(c.finish_reason, 'tool_calls', JSON.stringify(c));
      } else {
        assert.ok(['tool_calls', 'length'].includes(c.finish_reason), JSON.stringify(c));
      }
      for (const call of c.message.tool_calls) {
        const tool = boundedTools.find((t) => t.function.name === call.function.name);
        assert.ok(tool, call.function.name);
        checkArguments(JSON.parse(call.function.arguments), tool.function.parameters);
      }
    }
  }
  // "required" with no tools is "none" (OpenAI), so it runs unconstrained.
  const r = await client.chat.completions.create({
    model, messages: [{ role: 'user', content: 'hi' }], tools: [], tool_choice: 'required', max_tokens: 4,
  });
  assert.equal(r.choices.length, 1);
  // With another output constraint: vLLM's 400.
  await rejects400({ tools, tool_choice: 'required', response_format: { type: 'json_object' } },
    /either use constraints for structured outputs or tools, not both/);
});

test('history with tool calls and tool results renders with Gemma 4 markers and is answered', async () => {
  const tok = await postJson(`${server.url}/tokenize`, { model, messages: history, tools, return_token_strs: true });
  assert.equal(tok.status, 200);
  const strs = tok.json.token_strs;
  // Arguments arrive as a JSON string and reach the template as a mapping: call:get_weather{city:<|"|>Paris<|"|>}.
  const text = strs.join('');
  assert.ok(text.includes('<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>'), text);
  assert.ok(text.includes('<|tool_response>response:get_weather{value:<|"|>sunny, 21 C<|"|>}<tool_response|>'), text);
  for (const special of ['<|tool_call>', '<tool_call|>', '<|tool_response>', '<tool_response|>', '<|"|>'])
    assert.ok(strs.includes(special), `${special} is one token`);
  const r = await client.chat.completions.create({ model, messages: history, tools, max_tokens: 8, temperature: 0 });
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.ok(r.usage.prompt_tokens === tok.json.count, 'the request renders the same prompt');
});

test('history: tool call arguments that are not JSON are a 400', async () => {
  const bad = structuredClone(history);
  bad[1].tool_calls[0].function.arguments = '{"city": "Paris"';
  await assert.rejects(
    client.chat.completions.create({ model, messages: bad, tools, max_tokens: 4 }),
    (e) => e instanceof OpenAI.BadRequestError && /function\.arguments is not valid JSON/.test(e.message),
  );
});

test('a server without --enable-auto-tool-choice refuses tools with "auto" (vLLM) and runs "none"', async () => {
  const plain = await startServer(['--max-model-len', '256', '--served-model-name', model]);
  try {
    const c = plain.client();
    await assert.rejects(
      c.chat.completions.create({ model, messages: [{ role: 'user', content: 'hi' }], tools, max_tokens: 4 }),
      (e) => e.status === 400 && /"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser/.test(e.message),
    );
    const r = await c.chat.completions.create({
      model, messages: history, tools, tool_choice: 'none', max_tokens: 4,
    });
    assert.equal(r.choices[0].message.role, 'assistant');
    assert.ok(!('reasoning_content' in r.choices[0].message), 'no reasoning fields without --reasoning-parser');
  } finally {
    assert.equal(await plain.stop(), 0);
  }
});
