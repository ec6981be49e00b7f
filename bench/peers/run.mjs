#!/usr/bin/env node
// tandem vs llama.cpp on the CPU, same weights, same prompt ids, greedy: see README.md.
//
//   node bench/peers/run.mjs [--rounds 5] [--threads 1,2] [--models 13m,100m] [--out FILE] [--quick] [--priority]
//
// Everything it downloads or builds goes to bench/peers/.work (git-ignored; --work DIR elsewhere).
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { ctQuantize } from './ct_quant.mjs';
import { convert, writeSafetensors } from './gguf.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '../..');
const NLC_VERSION = '3.21.1';

const opts = {
  rounds: 5, threads: [1, 2], models: ['13m', '100m'], out: null, quick: false, decodeTokens: 128, prefillTokens: 512,
  tandem: path.join(REPO, 'build/tandem'), work: path.join(HERE, '.work'), spec: true, k: 2, priority: false,
};
for (let i = 2; i < process.argv.length; ++i) {
  const a = process.argv[i], v = () => process.argv[++i];
  if (a === '--rounds') opts.rounds = Number(v());
  else if (a === '--threads') opts.threads = v().split(',').map(Number);
  else if (a === '--models') opts.models = v().split(',');
  else if (a === '--out') opts.out = v();
  else if (a === '--tandem') opts.tandem = path.resolve(v());
  else if (a === '--work') opts.work = path.resolve(v());
  else if (a === '--no-spec') opts.spec = false;
  else if (a === '--priority') opts.priority = true;
  else if (a === '--quick') Object.assign(opts, { quick: true, rounds: 1, decodeTokens: 32, prefillTokens: 128 });
  else { console.error(`unknown argument ${a}`); process.exit(2); }
}

const log = (...m) => console.error('[peers]', ...m);

// --priority: each timed run in a session of its own whose autogroup (Linux groups a session's processes
// and shares the CPU fairly between groups, whatever their nice values) and nice are raised to -10, so
// that builds in other sessions take less of its cores (needs root).
const PRIORITY = ['setsid', '-w', 'bash', '-c', 'echo -10 > /proc/self/autogroup && exec nice -n -10 "$@"', 'run'];

function run(cmd, args, { env, cwd, timed = false } = {}) {
  if (timed && opts.priority) [cmd, args] = [PRIORITY[0], [...PRIORITY.slice(1), cmd, ...args]];
  const r = spawnSync(cmd, args, { encoding: 'utf8', env: { ...process.env, ...env }, cwd, maxBuffer: 1 << 28 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ').slice(0, 300)} failed (${r.status}):\n${(r.stderr || '').slice(-2000)}`);
  return r.stdout;
}

// --- llama.cpp: the npm package's prebuilt libraries, and programs built against them from its bundled source ---

function setupLlama(work) {
  const npmDir = path.join(work, 'npm');
  const pkg = path.join(npmDir, 'node_modules/node-llama-cpp/package.json');
  if (!fs.existsSync(pkg) || JSON.parse(fs.readFileSync(pkg, 'utf8')).version !== NLC_VERSION) {
    log(`installing node-llama-cpp@${NLC_VERSION} (--ignore-scripts) into ${npmDir}`);
    fs.mkdirSync(npmDir, { recursive: true });
    run('npm', ['install', '--prefix', npmDir, '--no-save', '--no-audit', '--no-fund', '--ignore-scripts', '--omit=optional',
                `node-llama-cpp@${NLC_VERSION}`, `@node-llama-cpp/linux-x64@${NLC_VERSION}`]);
  }
  const libs = path.join(npmDir, 'node_modules/@node-llama-cpp/linux-x64/bins/linux-x64');
  const src = path.join(work, 'llama.cpp');
  if (!fs.existsSync(path.join(src, 'include/llama.h'))) {
    log('unpacking the llama.cpp source bundled in node-llama-cpp');
    run('git', ['clone', '--quiet', path.join(npmDir, 'node_modules/node-llama-cpp/llama/gitRelease.bundle'), src]);
  }
  // The programs sit beside links to the libraries: ggml loads its CPU backend variants from there.
  const bin = path.join(work, 'bin');
  fs.mkdirSync(bin, { recursive: true });
  for (const f of fs.readdirSync(libs).filter((f) => f.endsWith('.so'))) {
    const link = path.join(bin, f);
    if (!fs.existsSync(link)) fs.symlinkSync(path.join(libs, f), link);
  }
  const inc = ['include', 'ggml/include', 'common', 'vendor', 'src'].flatMap((d) => ['-I', path.join(src, d)]);
  const link = ['-L', bin, '-l:libllama.v0.4.0.so', '-l:libggml.v0.4.0.so', '-l:libggml-base.so', `-Wl,-rpath,${bin}`];
  const build = (out, source, extra = []) => {
    const exe = path.join(bin, out);
    if (fs.existsSync(exe) && fs.statSync(exe).mtimeMs > fs.statSync(source).mtimeMs) return exe;
    log(`building ${out}`);
    run('nice', ['g++', '-O2', '-std=c++17', ...inc, source, '-o', exe, ...extra, ...link]);
    return exe;
  };
  const commit = run('git', ['-C', src, 'log', '-1', '--format=%h %s']).trim();
  return {
    driver: build('llama_driver', path.join(HERE, 'llama_driver.cpp')),
    spec: build('llama-speculative-simple', path.join(src, 'examples/speculative-simple/speculative-simple.cpp'),
                ['-L', bin, '-l:libllama-common.so']),
    version: `node-llama-cpp ${NLC_VERSION} (llama.cpp ${commit.split(' ')[0]})`,
  };
}

// --- models ---

// A random-weight checkpoint for a dense gemma4_text config, written as safetensors so both engines load
// the same bytes: uniform values in ±0.05, norm weights in 1 ± 0.1 (as tandem's --load-format dummy), bf16.
function randomCheckpoint(configDir, outDir) {
  if (fs.existsSync(path.join(outDir, 'model.safetensors'))) return outDir;
  const c = JSON.parse(fs.readFileSync(path.join(configDir, 'config.json'), 'utf8'));
  if (c.model_type !== 'gemma4_text' || c.num_experts || c.hidden_size_per_layer_input)
    throw new Error(`${configDir}: random checkpoints are made for dense gemma4_text configs only`);
  log(`writing a random-weight checkpoint for ${configDir}`);
  fs.mkdirSync(outDir, { recursive: true });
  fs.copyFileSync(path.join(configDir, 'config.json'), path.join(outDir, 'config.json'));
  let state = 0x9e3779b9;
  const f32 = new Float32Array(1), u32 = new Uint32Array(f32.buffer);
  const fill = (shape, center, half) => {
    const n = shape.reduce((a, b) => a * b, 1), data = Buffer.alloc(2 * n);
    for (let i = 0; i < n; ++i) {
      state ^= state << 13; state ^= state >>> 17; state ^= state << 5; state >>>= 0;
      f32[0] = center + half * (2 * (state / 4294967296) - 1);
      data.writeUInt16LE(((u32[0] + 0x7fff + ((u32[0] >>> 16) & 1)) >>> 16) & 0xffff, 2 * i);
    }
    return { dtype: 'BF16', shape, data };
  };
  const H = c.hidden_size, nh = c.num_attention_heads, I = c.intermediate_size, t = new Map();
  t.set('model.embed_tokens.weight', fill([c.vocab_size, H], 0, 0.05));
  t.set('model.norm.weight', fill([H], 1, 0.1));
  c.layer_types.forEach((type, i) => {
    const full = type === 'full_attention', p = `model.layers.${i}.`;
    const d = full ? c.global_head_dim : c.head_dim;
    const nkv = full && c.attention_k_eq_v ? c.num_global_key_value_heads : c.num_key_value_heads;
    for (const n of ['input_layernorm', 'post_attention_layernorm', 'pre_feedforward_layernorm', 'post_feedforward_layernorm'])
      t.set(`${p}${n}.weight`, fill([H], 1, 0.1));
    t.set(`${p}self_attn.q_proj.weight`, fill([nh * d, H], 0, 0.05));
    t.set(`${p}self_attn.q_norm.weight`, fill([d], 1, 0.1));
    t.set(`${p}self_attn.k_proj.weight`, fill([nkv * d, H], 0, 0.05));
    t.set(`${p}self_attn.k_norm.weight`, fill([d], 1, 0.1));
    if (!(full && c.attention_k_eq_v)) t.set(`${p}self_attn.v_proj.weight`, fill([nkv * d, H], 0, 0.05));
    t.set(`${p}self_attn.o_proj.weight`, fill([H, nh * d], 0, 0.05));
    t.set(`${p}mlp.gate_proj.weight`, fill([I, H], 0, 0.05));
    t.set(`${p}mlp.up_proj.weight`, fill([I, H], 0, 0.05));
    t.set(`${p}mlp.down_proj.weight`, fill([H, I], 0, 0.05));
  });
  writeSafetensors(path.join(outDir, 'model.safetensors'), t);
  return outDir;
}

// tandem's int8 / int4 inputs: the same weights as compressed-tensors W8A16 / W4A16 checkpoints.
function ctCheckpoints(name, dir, work) {
  const out = {};
  for (const bits of [8, 4]) {
    out[bits] = path.join(work, 'ct', `${name}-int${bits}`);
    if (!fs.existsSync(path.join(out[bits], 'model.safetensors'))) {
      log(`quantizing ${dir} to compressed-tensors int${bits}`);
      ctQuantize(dir, out[bits], bits);
    }
  }
  return out;
}

function ggufs(llama, name, dir, work) {
  const base = path.join(work, 'gguf', name);
  fs.mkdirSync(path.dirname(base), { recursive: true });
  const out = { bf16: `${base}-bf16.gguf`, q8_0: `${base}-q8_0.gguf`, q4_0: `${base}-q4_0.gguf` };
  if (!fs.existsSync(out.bf16)) {
    log(`converting ${dir} to GGUF`);
    convert(dir, out.bf16);
  }
  for (const q of ['q8_0', 'q4_0'])
    if (!fs.existsSync(out[q])) run(llama.driver, ['quantize', out.bf16, out[q], q]);
  return out;
}

// --- prompts ---

function promptIds(model, text, n) {
  if (!model.tokenizer) return Array.from({ length: n }, (_, i) => 10 + ((i * 7919) % (model.vocab - 10)));
  const ids = JSON.parse(run(opts.tandem, ['tokenize', '--tokenizer', model.dir, text]));
  if (ids.length < n) throw new Error(`prompt text gives ${ids.length} tokens, need ${n}`);
  return ids.slice(0, n);
}

// --- runs ---

const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s.length ? (s[(s.length - 1) >> 1] + s[s.length >> 1]) / 2 : NaN; };

function tandemRun(model, threads, ids, nGen, extra = [], dir = model.dir) {
  const args = ['generate', '--model', dir, '--ids', ids.join(','), '--max-tokens', String(nGen), '--ignore-eos',
                '--threads', String(threads), '--json', ...extra];
  const j = JSON.parse(run(opts.tandem, args, { timed: true }).trim().split('\n').pop());
  return { prefill: j.prefill_seconds, decodeRate: j.decode_tokens / j.decode_seconds, ids: j.ids, spec: j.spec };
}

// prompt: token ids, or text for llama.cpp to tokenize.
function llamaRun(llama, gguf, threads, prompt, nGen) {
  const p = Array.isArray(prompt) ? ['--ids', prompt.join(',')] : ['--text', prompt];
  const j = JSON.parse(run(llama.driver, ['run', gguf, '--threads', String(threads), ...p, '--n-gen', String(nGen)], { timed: true }));
  return { prefill: j.prefill_seconds, decodeRate: (j.ids.length - 1) / j.decode_seconds, ids: j.ids, prompt: j.n_prompt };
}

function specStats(text) {
  const num = (re) => Number((text.match(re) || [])[1]);
  return { rate: num(/decoded\s+\d+ tokens in\s+[\d.]+ seconds, speed:\s+([\d.]+) t\/s/), prompt: num(/encoded\s+(\d+) tokens/),
           drafted: num(/n_drafted\s*=\s*(\d+)/), accepted: num(/n_accept\s*=\s*(\d+)/) };
}

function llamaSpecRun(llama, model, threads, text, nGen) {
  let cmd = llama.spec, args = ['-m', model.gguf.bf16, '-md', model.draftGguf, '--spec-type', 'draft-mtp',
                                '--spec-draft-n-max', String(opts.k), '-p', text, '-n', String(nGen), '--temp', '0',
                                '-t', String(threads), '-c', '2048'];
  if (opts.priority) [cmd, args] = [PRIORITY[0], [...PRIORITY.slice(1), cmd, ...args]];
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`llama speculative-simple failed:\n${r.stderr.slice(-2000)}`);
  return specStats(r.stdout + r.stderr);
}

function firstDivergence(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; ++i) if (a[i] !== b[i]) return i;
  return n;
}

// --- main ---

function main() {
  fs.mkdirSync(opts.work, { recursive: true });
  if (!fs.existsSync(opts.tandem)) throw new Error(`${opts.tandem} not found: build tandem first (make build)`);
  const llama = setupLlama(opts.work);
  const models = [];
  const code = fs.readFileSync(path.join(REPO, 'tools/train_bundled.py'), 'utf8');
  if (opts.models.includes('13m')) {
    const dir = path.join(REPO, 'models/tandem-code-demo'), draft = path.join(REPO, 'models/tandem-code-demo-assistant');
    const m = { name: 'bundled 13M', dir, draft, tokenizer: true, vocab: 8192 };
    m.gguf = ggufs(llama, 'tandem-code-demo', dir, opts.work);
    m.ct = ctCheckpoints('tandem-code-demo', dir, opts.work);
    m.draftGguf = path.join(opts.work, 'gguf/tandem-code-demo-assistant-bf16.gguf');
    if (!fs.existsSync(m.draftGguf)) convert(draft, m.draftGguf);
    models.push(m);
  }
  if (opts.models.includes('100m')) {
    const dir = randomCheckpoint(path.join(REPO, 'bench/configs/dummy-100m'), path.join(opts.work, 'dummy-100m'));
    const m = { name: '100M config (random weights)', dir, tokenizer: false, vocab: 32768 };
    m.gguf = ggufs(llama, 'dummy-100m', dir, opts.work);
    m.ct = ctCheckpoints('dummy-100m', dir, opts.work);
    models.push(m);
  }
  for (const m of models) {
    m.decodeIds = promptIds(m, code, 32);
    m.prefillIds = promptIds(m, code, opts.prefillTokens);
  }

  const engines = [
    { key: 'tandem bf16', run: (m, th, ids, n) => tandemRun(m, th, ids, n) },
    { key: 'llama.cpp BF16', run: (m, th, ids, n) => llamaRun(llama, m.gguf.bf16, th, ids, n) },
    { key: 'tandem int8', run: (m, th, ids, n) => tandemRun(m, th, ids, n, [], m.ct[8]) },
    // The same checkpoint with an int8 copy of its bf16 tied head (--quantize-lm-head), as llama.cpp
    // quantizes the head (Q8_0 for Q8_0, Q6_K for Q4_0).
    { key: 'tandem int8 + head', run: (m, th, ids, n) => tandemRun(m, th, ids, n, ['--quantize-lm-head'], m.ct[8]) },
    { key: 'llama.cpp Q8_0', run: (m, th, ids, n) => llamaRun(llama, m.gguf.q8_0, th, ids, n) },
    { key: 'tandem int4', run: (m, th, ids, n) => tandemRun(m, th, ids, n, [], m.ct[4]) },
    { key: 'tandem int4 + head', run: (m, th, ids, n) => tandemRun(m, th, ids, n, ['--quantize-lm-head'], m.ct[4]) },
    { key: 'llama.cpp Q4_0', run: (m, th, ids, n) => llamaRun(llama, m.gguf.q4_0, th, ids, n) },
  ];
  const res = {};  // `${model}|${threads}|${mode}|${engine}` -> [values]
  const loads = [];
  const ids = {};  // greedy ids of the decode runs, per model and engine
  const record = (k, v) => (res[k] ??= []).push(v);
  const started = new Date();
  for (let round = 0; round < opts.rounds; ++round) {
    for (const m of models) {
      for (const th of opts.threads) {
        // Interleaved: every engine once per round, the order rotating from round to round.
        const order = engines.map((_, i) => engines[(i + round) % engines.length]);
        for (const e of order) {
          loads.push(os.loadavg()[0]);
          const d = e.run(m, th, m.decodeIds, opts.decodeTokens + 1);
          record(`${m.name}|${th}|decode|${e.key}`, d.decodeRate);
          ids[`${m.name}|${e.key}`] ??= d.ids;
          loads.push(os.loadavg()[0]);
          const p = e.run(m, th, m.prefillIds, 1);
          record(`${m.name}|${th}|prefill|${e.key}`, opts.prefillTokens / p.prefill);
        }
        log(`round ${round + 1}/${opts.rounds} ${m.name} ${th} thread(s) done, load ${os.loadavg()[0].toFixed(2)}`);
      }
    }
  }

  // Speculative decoding on the bundled pair: tandem's MTP drafter (k drafts) vs llama.cpp's draft-mtp,
  // each against its own plain greedy decode of the same prompt text.
  const spec = [];
  const specModel = models.find((m) => m.draft);
  if (opts.spec && specModel) {
    const text = builtinPrompt();
    const tids = JSON.parse(run(opts.tandem, ['tokenize', '--tokenizer', specModel.dir, text]));
    for (const th of opts.threads) {
      const r = { threads: th, tandem: [], tandemPlain: [], llama: [], llamaPlain: [], acc: null, llamaAcc: null, llamaPrompt: null };
      for (let round = 0; round < opts.rounds; ++round) {
        loads.push(os.loadavg()[0]);
        r.tandemPlain.push(tandemRun(specModel, th, tids, opts.decodeTokens).decodeRate);
        const s = tandemRun(specModel, th, tids, opts.decodeTokens,
                            ['--speculative-config', JSON.stringify({ model: specModel.draft, num_speculative_tokens: opts.k })]);
        r.tandem.push(s.decodeRate);
        r.acc = s.spec.num_accepted_tokens / s.spec.num_draft_tokens;
        loads.push(os.loadavg()[0]);
        r.llamaPlain.push(llamaRun(llama, specModel.gguf.bf16, th, text, opts.decodeTokens).decodeRate);
        const l = llamaSpecRun(llama, specModel, th, text, opts.decodeTokens);
        r.llama.push(l.rate);
        r.llamaAcc = l.accepted / l.drafted;
        r.llamaPrompt = l.prompt;
      }
      r.promptTokens = tids.length;
      spec.push(r);
      log(`speculative, ${th} thread(s) done`);
    }
  }
  report({ llama, models, res, ids, loads, spec, started });
}

function builtinPrompt() {
  const src = fs.readFileSync(path.join(REPO, 'src/cli/cmd_bench.cc'), 'utf8');
  const m = src.match(/kBuiltinPrompt = R"\(([\s\S]*?)\)";/);
  if (!m) throw new Error('cannot find the built-in bench prompt in src/cli/cmd_bench.cc');
  return m[1];
}

function report({ llama, models, res, ids, loads, spec, started }) {
  const cpu = (fs.readFileSync('/proc/cpuinfo', 'utf8').match(/model name\s*:\s*(.*)/) || [])[1] || 'unknown CPU';
  const commit = (() => { try { return execFileSync('git', ['-C', REPO, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim(); } catch { return '?'; } })();
  const cell = (k) => { const v = res[k]; return v ? `${median(v).toFixed(1)}` : '–'; };
  const lines = [];
  lines.push(`Machine: ${cpu}, ${os.cpus().length} vCPUs; ${started.toISOString().slice(0, 16)} UTC; tandem ${commit}; ${llama.version}.`);
  lines.push(`Load average (1 min) over the runs: min ${Math.min(...loads).toFixed(2)}, median ${median(loads).toFixed(2)}, max ${Math.max(...loads).toFixed(2)}${opts.priority ? '; every timed run at raised priority (--priority: own autogroup and nice -10)' : ''}.`);
  lines.push(`Medians of ${opts.rounds} interleaved rounds. Decode: ${opts.decodeTokens} greedy tokens after a 32-token prompt, tokens / second after the first token. Prefill: a ${opts.prefillTokens}-token prompt, prompt tokens / time to the first token.`);
  lines.push('');
  const heads = ['tandem bf16', 'llama.cpp BF16', 'tandem int8', 'tandem int8 + head', 'llama.cpp Q8_0', 'tandem int4',
                 'tandem int4 + head', 'llama.cpp Q4_0'];
  for (const mode of ['decode', 'prefill']) {
    lines.push(`| ${mode} tok/s | ${heads.join(' | ')} |`);
    lines.push(`|---|${heads.map(() => '---:').join('|')}|`);
    for (const m of models)
      for (const th of opts.threads)
        lines.push(`| ${m.name}, ${th} thread${th > 1 ? 's' : ''} | ${heads.map((h) => cell(`${m.name}|${th}|${mode}|${h}`)).join(' | ')} |`);
    lines.push('');
  }
  lines.push('Greedy cross-check (decode runs, same prompt ids): first position where the tokens differ, of ' + (opts.decodeTokens + 1) + '.');
  lines.push('');
  lines.push('| model | tandem vs llama.cpp BF16 | vs Q8_0 | vs Q4_0 |');
  lines.push('|---|---:|---:|---:|');
  for (const m of models) {
    const t = ids[`${m.name}|tandem bf16`];
    const d = (e) => { const o = ids[`${m.name}|${e}`]; if (!t || !o) return '–'; const i = firstDivergence(t, o); return i === t.length ? 'identical' : String(i); };
    lines.push(`| ${m.name} | ${d('llama.cpp BF16')} | ${d('llama.cpp Q8_0')} | ${d('llama.cpp Q4_0')} |`);
  }
  if (spec.length) {
    lines.push('');
    lines.push(`Speculative decoding, bundled pair (target + its MTP assistant, ${opts.k} drafts per round, greedy, the built-in bench prompt, ${opts.decodeTokens} tokens), decode tok/s medians:`);
    lines.push('');
    lines.push('| threads | tandem plain | tandem MTP | speedup | acceptance | llama.cpp plain | llama.cpp draft-mtp | speedup | acceptance |');
    lines.push('|---|---:|---:|---:|---:|---:|---:|---:|---:|');
    for (const r of spec) {
      const tp = median(r.tandemPlain), ts = median(r.tandem), lp = median(r.llamaPlain), ls = median(r.llama);
      lines.push(`| ${r.threads} | ${tp.toFixed(1)} | ${ts.toFixed(1)} | ${(ts / tp).toFixed(2)}x | ${(100 * r.acc).toFixed(0)} % | ${lp.toFixed(1)} | ${ls.toFixed(1)} | ${(ls / lp).toFixed(2)}x | ${(100 * r.llamaAcc).toFixed(0)} % |`);
    }
    lines.push('');
    lines.push(`Each engine decodes the prompt text as its own tokenizer encodes it (${spec[0].promptTokens} tokens for tandem, ${spec[0].llamaPrompt} for llama.cpp, whose gemma4 pre-tokenizer splits this model's text differently), plain and speculative alike, so each speedup compares like with like; llama.cpp's plain decode is this harness's driver, its speculative one llama.cpp's speculative-simple example.`);
  }
  const text = lines.join('\n') + '\n';
  if (opts.out) fs.writeFileSync(opts.out, text);
  process.stdout.write(text);
}

main();
