// Gemma 4 checkpoints (safetensors, Hugging Face names) -> GGUF, written here from llama.cpp's documented
// conversion rules for Gemma 4 (its gguf-py tensor map and key names, and the Gemma 3 / Gemma 4 model
// classes of its converter), for the peer benchmark only. Covers what the peer harness converts: dense
// and MoE gemma4 / gemma4_text targets and gemma4_assistant drafters with a dense head, BF16 or F32
// weights, a tokenizer.json BPE vocabulary (or, for tokenizer-less checkpoints, placeholder tokens).
//
//   node gguf.mjs CHECKPOINT_DIR OUT.gguf
//
// The rules, as facts:
// - GGUF v3, little-endian, alignment 32; tensor dims are the PyTorch shape reversed; data as stored.
// - Tensor types (outtype bf16): 1-D tensors, names ending "_norm.weight", the router (ffn_gate_inp.*)
//   and names not ending ".weight" are F32; everything else stays BF16.
// - Names: embed_tokens -> token_embd, norm -> output_norm, layers.N.{input_layernorm -> attn_norm,
//   post_attention_layernorm -> post_attention_norm, pre_feedforward_layernorm -> ffn_norm,
//   post_feedforward_layernorm -> post_ffw_norm, pre_feedforward_layernorm_2 -> pre_ffw_norm_2,
//   post_feedforward_layernorm_{1,2} -> post_ffw_norm_{1,2}, self_attn.{q,k,v,o}_proj -> attn_{q,k,v,output},
//   self_attn.{q,k}_norm -> attn_{q,k}_norm, mlp.{gate,up,down}_proj -> ffn_{gate,up,down},
//   router.proj -> ffn_gate_inp.weight, router.scale -> ffn_gate_inp.scale, router.per_expert_scale ->
//   ffn_down_exps.scale, experts.gate_up_proj -> ffn_gate_up_exps.weight, experts.down_proj ->
//   ffn_down_exps.weight, layer_scalar -> layer_output_scale.weight}; assistant: pre_projection ->
//   nextn.pre_projection, post_projection -> nextn.post_projection.
// - Gemma 4 norms are stored as is (no +1 shift, unlike Gemma 3).
// - Full-attention layers' proportional RoPE is a rope_freqs.weight F32 tensor of global_head_dim / 2
//   factors: 1 for the rotated pairs (partial_rotary_factor of them), 1e30 for the rest.
import fs from 'node:fs';
import path from 'node:path';

const GGUF_MAGIC = 0x46554747;
const ALIGN = 32;
const T = { UINT8: 0, INT32: 5, UINT32: 4, FLOAT32: 6, BOOL: 7, STRING: 8, ARRAY: 9 };
export const GGML = { F32: 0, F16: 1, Q4_0: 2, Q8_0: 8, BF16: 30 };
const FILE_TYPE_BF16 = 32;
const TOKEN_TYPE = { NORMAL: 1, CONTROL: 3, USER_DEFINED: 4, BYTE: 6 };

// --- safetensors ---

export function readSafetensors(file) {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  const base = 8 + n;
  const tensors = new Map();
  for (const [name, t] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    tensors.set(name, { dtype: t.dtype, shape: t.shape, data: buf.subarray(base + t.data_offsets[0], base + t.data_offsets[1]) });
  }
  return tensors;
}

export function writeSafetensors(file, tensors) {
  const header = {};
  let offset = 0;
  for (const [name, t] of tensors) {
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.data.length] };
    offset += t.data.length;
  }
  let json = Buffer.from(JSON.stringify(header), 'utf8');
  json = Buffer.concat([json, Buffer.alloc((8 - (json.length % 8)) % 8, 0x20)]);
  const fd = fs.openSync(file, 'w');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  fs.writeSync(fd, len);
  fs.writeSync(fd, json);
  for (const t of tensors.values()) fs.writeSync(fd, t.data);
  fs.closeSync(fd);
}

// --- GGUF writer ---

class Out {
  constructor() { this.parts = []; this.length = 0; }
  push(b) { this.parts.push(b); this.length += b.length; }
  u32(v) { const b = Buffer.alloc(4); b.writeUInt32LE(v); this.push(b); }
  i32(v) { const b = Buffer.alloc(4); b.writeInt32LE(v); this.push(b); }
  u64(v) { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); this.push(b); }
  f32(v) { const b = Buffer.alloc(4); b.writeFloatLE(v); this.push(b); }
  str(s) { const b = Buffer.from(s, 'utf8'); this.u64(b.length); this.push(b); }
  value(type, v) {
    switch (type) {
      case T.UINT32: return this.u32(v);
      case T.INT32: return this.i32(v);
      case T.FLOAT32: return this.f32(v);
      case T.BOOL: return this.push(Buffer.from([v ? 1 : 0]));
      case T.STRING: return this.str(v);
      default: throw new Error(`unsupported GGUF value type ${type}`);
    }
  }
}

// kv: [key, type, value] or [key, T.ARRAY, elemType, values]; tensors: {name, type, shape (PyTorch order), data}.
export function writeGguf(file, kv, tensors) {
  const out = new Out();
  out.u32(GGUF_MAGIC);
  out.u32(3);
  out.u64(tensors.length);
  out.u64(kv.length + 1);
  out.str('general.alignment');
  out.u32(T.UINT32);
  out.u32(ALIGN);
  for (const [key, type, a, b] of kv) {
    out.str(key);
    out.u32(type);
    if (type === T.ARRAY) {
      out.u32(a);
      out.u64(b.length);
      for (const v of b) out.value(a, v);
    } else {
      out.value(type, a);
    }
  }
  let offset = 0;
  for (const t of tensors) {
    out.str(t.name);
    out.u32(t.shape.length);
    for (const d of [...t.shape].reverse()) out.u64(d);
    out.u32(t.type);
    out.u64(offset);
    offset += Math.ceil(t.data.length / ALIGN) * ALIGN;
  }
  const fd = fs.openSync(file, 'w');
  for (const p of out.parts) fs.writeSync(fd, p);
  fs.writeSync(fd, Buffer.alloc((ALIGN - (out.length % ALIGN)) % ALIGN));
  for (const t of tensors) {
    fs.writeSync(fd, t.data);
    fs.writeSync(fd, Buffer.alloc((ALIGN - (t.data.length % ALIGN)) % ALIGN));
  }
  fs.closeSync(fd);
}

// --- conversion ---

function toF32(t) {
  if (t.dtype === 'F32') return t.data;
  if (t.dtype !== 'BF16') throw new Error(`dtype ${t.dtype} is not supported (BF16 or F32)`);
  const n = t.data.length / 2;
  const out = Buffer.alloc(4 * n);
  for (let i = 0; i < n; ++i) out.writeUInt32LE(t.data.readUInt16LE(2 * i) << 16 >>> 0, 4 * i);
  return out;
}

const LAYER_NAMES = [
  ['input_layernorm.weight', 'attn_norm.weight'],
  ['post_attention_layernorm.weight', 'post_attention_norm.weight'],
  ['pre_feedforward_layernorm.weight', 'ffn_norm.weight'],
  ['post_feedforward_layernorm.weight', 'post_ffw_norm.weight'],
  ['pre_feedforward_layernorm_2.weight', 'pre_ffw_norm_2.weight'],
  ['post_feedforward_layernorm_1.weight', 'post_ffw_norm_1.weight'],
  ['post_feedforward_layernorm_2.weight', 'post_ffw_norm_2.weight'],
  ['self_attn.q_proj.weight', 'attn_q.weight'],
  ['self_attn.k_proj.weight', 'attn_k.weight'],
  ['self_attn.v_proj.weight', 'attn_v.weight'],
  ['self_attn.o_proj.weight', 'attn_output.weight'],
  ['self_attn.q_norm.weight', 'attn_q_norm.weight'],
  ['self_attn.k_norm.weight', 'attn_k_norm.weight'],
  ['mlp.gate_proj.weight', 'ffn_gate.weight'],
  ['mlp.up_proj.weight', 'ffn_up.weight'],
  ['mlp.down_proj.weight', 'ffn_down.weight'],
  ['router.proj.weight', 'ffn_gate_inp.weight'],
  ['router.scale', 'ffn_gate_inp.scale'],
  ['router.per_expert_scale', 'ffn_down_exps.scale'],
  ['experts.gate_up_proj', 'ffn_gate_up_exps.weight'],
  ['experts.down_proj', 'ffn_down_exps.weight'],
  ['layer_scalar', 'layer_output_scale.weight'],
];

function ggufName(name) {
  const top = { 'embed_tokens.weight': 'token_embd.weight', 'norm.weight': 'output_norm.weight',
                'pre_projection.weight': 'nextn.pre_projection.weight', 'post_projection.weight': 'nextn.post_projection.weight' };
  const stripped = name.replace(/^model\.language_model\./, '').replace(/^model\./, '');
  if (top[stripped]) return top[stripped];
  const m = stripped.match(/^layers\.(\d+)\.(.+)$/);
  if (m) for (const [hf, gg] of LAYER_NAMES) if (m[2] === hf) return `blk.${m[1]}.${gg}`;
  throw new Error(`no GGUF name for tensor ${name}`);
}

function ggufType(name, shape) {
  if (shape.length <= 1 || name.endsWith('_norm.weight') || name.includes('.ffn_gate_inp.') || !name.endsWith('.weight'))
    return GGML.F32;
  return GGML.BF16;
}

function vocabulary(dir, vocabSize) {
  const file = path.join(dir, 'tokenizer.json');
  if (!fs.existsSync(file)) {  // placeholder tokens for a tokenizer-less (random-weight) checkpoint
    const special = ['<pad>', '<eos>', '<bos>', '<unk>'];
    const tokens = Array.from({ length: vocabSize }, (_, i) => special[i] ?? `<t${i}>`);
    return { tokens, types: tokens.map((_, i) => (i < 4 ? TOKEN_TYPE.CONTROL : TOKEN_TYPE.NORMAL)), merges: [],
             ids: { pad: 0, eos: 1, bos: 2, unk: 3 } };
  }
  const tj = JSON.parse(fs.readFileSync(file, 'utf8'));
  if (tj.model.type !== 'BPE' || !tj.model.byte_fallback) throw new Error(`${file}: not a byte-fallback BPE tokenizer`);
  const byId = new Map(Object.entries(tj.model.vocab).map(([t, i]) => [i, t]));
  const special = new Set(tj.added_tokens.filter((a) => a.special).map((a) => a.id));
  const visible = new Set(['<|channel>', '<channel|>', '<|tool_call>', '<tool_call|>', '<|tool_response>', '<tool_response|>', '<|"|>']);
  for (const a of tj.added_tokens) byId.set(a.id, a.content);
  const n = Math.max(...byId.keys()) + 1;
  const tokens = [], types = [];
  for (let i = 0; i < n; ++i) {
    const text = byId.get(i);
    if (text === undefined) throw new Error(`${file}: no token with id ${i}`);
    tokens.push(text);
    types.push(visible.has(text) ? TOKEN_TYPE.USER_DEFINED
      : /^<0x[0-9A-Fa-f]{2}>$/.test(text) ? TOKEN_TYPE.BYTE
      : special.has(i) ? TOKEN_TYPE.CONTROL : TOKEN_TYPE.NORMAL);
  }
  const merges = tj.model.merges.map((m) => (Array.isArray(m) ? m.join(' ') : m));
  const idOf = (t) => tj.model.vocab[t] ?? tj.added_tokens.find((a) => a.content === t)?.id;
  return { tokens, types, merges, ids: { pad: idOf('<pad>'), eos: idOf('<eos>'), bos: idOf('<bos>'), unk: idOf('<unk>') } };
}

export function convert(dir, outFile) {
  const config = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
  const assistant = config.model_type === 'gemma4_assistant';
  const h = { ...(config.text_config ?? config) };
  const arch = assistant ? 'gemma4-assistant' : 'gemma4';
  const L = h.num_hidden_layers, types = h.layer_types;
  const swa = types.map((t) => t === 'sliding_attention');
  const fullIdx = swa.indexOf(false);
  const plc = h.per_layer_config ?? {};
  const headDim = h.head_dim, nkv = h.num_key_value_heads;
  const headDimFull = h.global_head_dim ?? plc[fullIdx]?.head_dim ?? headDim;
  const nkvFull = h.num_global_key_value_heads ?? plc[fullIdx]?.num_key_value_heads ?? nkv;
  const rope = h.rope_parameters;
  const a = (k) => `${arch}.${k}`;
  const kv = [
    ['general.architecture', T.STRING, arch],
    ['general.name', T.STRING, path.basename(path.resolve(dir))],
    ['general.file_type', T.UINT32, FILE_TYPE_BF16],
    ['general.quantization_version', T.UINT32, 2],
    [a('block_count'), T.UINT32, L],
    [a('context_length'), T.UINT32, h.max_position_embeddings ?? 131072],
    [a('embedding_length'), T.UINT32, h.hidden_size],
    [a('feed_forward_length'), T.UINT32, h.intermediate_size],
    [a('attention.head_count'), T.UINT32, h.num_attention_heads],
    [a('attention.head_count_kv'), T.ARRAY, T.INT32, swa.map((s) => (s ? nkv : nkvFull))],
    [a('attention.key_length'), T.UINT32, headDimFull],
    [a('attention.value_length'), T.UINT32, headDimFull],
    [a('attention.key_length_swa'), T.UINT32, headDim],
    [a('attention.value_length_swa'), T.UINT32, headDim],
    [a('attention.layer_norm_rms_epsilon'), T.FLOAT32, h.rms_norm_eps ?? 1e-6],
    [a('attention.sliding_window'), T.UINT32, h.sliding_window],
    [a('attention.sliding_window_pattern'), T.ARRAY, T.BOOL, swa],
    [a('attention.shared_kv_layers'), T.UINT32, h.num_kv_shared_layers ?? 0],
    [a('embedding_length_per_layer_input'), T.UINT32, h.hidden_size_per_layer_input ?? 0],
    [a('rope.freq_base'), T.FLOAT32, rope.full_attention.rope_theta],
    [a('rope.freq_base_swa'), T.FLOAT32, rope.sliding_attention.rope_theta],
    [a('rope.dimension_count'), T.UINT32, headDimFull],
    [a('rope.dimension_count_swa'), T.UINT32, headDim],
  ];
  if (h.final_logit_softcapping) kv.push([a('final_logit_softcapping'), T.FLOAT32, h.final_logit_softcapping]);
  if (h.num_experts) {
    kv.push([a('expert_count'), T.UINT32, h.num_experts], [a('expert_used_count'), T.UINT32, h.top_k_experts],
            [a('expert_feed_forward_length'), T.UINT32, h.moe_intermediate_size]);
  }
  if (assistant) {
    kv.push([a('embedding_length_out'), T.UINT32, config.backbone_hidden_size], [a('nextn_predict_layers'), T.UINT32, L]);
  }
  const vocab = vocabulary(dir, h.vocab_size);
  kv.push(
    ['tokenizer.ggml.model', T.STRING, 'gemma4'],
    ['tokenizer.ggml.tokens', T.ARRAY, T.STRING, vocab.tokens],
    ['tokenizer.ggml.scores', T.ARRAY, T.FLOAT32, vocab.tokens.map(() => -1000.0)],
    ['tokenizer.ggml.token_type', T.ARRAY, T.INT32, vocab.types],
    ['tokenizer.ggml.merges', T.ARRAY, T.STRING, vocab.merges],
    ['tokenizer.ggml.bos_token_id', T.UINT32, vocab.ids.bos],
    ['tokenizer.ggml.eos_token_id', T.UINT32, vocab.ids.eos],
    ['tokenizer.ggml.unknown_token_id', T.UINT32, vocab.ids.unk],
    ['tokenizer.ggml.padding_token_id', T.UINT32, vocab.ids.pad],
    ['tokenizer.ggml.add_bos_token', T.BOOL, true],
    ['tokenizer.ggml.add_space_prefix', T.BOOL, false],
  );

  const tensors = [];
  const rotated = Math.floor((headDimFull * rope.full_attention.partial_rotary_factor) / 2);
  const freqs = Buffer.alloc(4 * (headDimFull / 2));
  for (let i = 0; i < headDimFull / 2; ++i) freqs.writeFloatLE(i < rotated ? 1.0 : 1e30, 4 * i);
  tensors.push({ name: 'rope_freqs.weight', type: GGML.F32, shape: [headDimFull / 2], data: freqs });
  const files = fs.readdirSync(dir).filter((f) => f.endsWith('.safetensors') && f !== 'golden.safetensors').sort();
  for (const f of files) {
    for (const [name, t] of readSafetensors(path.join(dir, f))) {
      const gname = ggufName(name);
      const shape = t.shape.length === 0 ? [1] : t.shape;
      const type = ggufType(gname, shape);
      tensors.push({ name: gname, type, shape, data: type === GGML.F32 ? toF32(t) : t.data });
      if (type === GGML.BF16 && t.dtype !== 'BF16') throw new Error(`${name}: ${t.dtype} weights are not supported`);
    }
  }
  writeGguf(outFile, kv, tensors);
  return { arch, tensors: tensors.length };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [dir, out] = process.argv.slice(2);
  if (!dir || !out) {
    console.error('usage: node gguf.mjs CHECKPOINT_DIR OUT.gguf');
    process.exit(2);
  }
  const r = convert(dir, out);
  console.log(`${out}: ${r.arch}, ${r.tensors} tensors`);
}
