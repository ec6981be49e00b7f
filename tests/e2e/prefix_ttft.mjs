// Prefix-caching TTFT: the same long prefix (plus a short distinct suffix) sent repeatedly, with and
// without --enable-prefix-caching. Prints median TTFT of the first (cold) and later (warm) requests
// and the server's prefix-cache counters. Loopback only; bounded (a few requests per mode).
//   TANDEM_BINARY=build/tandem node prefix_ttft.mjs [--repeats 8] [--prefix-tokens 1500]
import { parseArgs } from 'node:util';
import { startServer, parseMetrics } from './server.mjs';

const { values: opt } = parseArgs({
  options: { repeats: { type: 'string', default: '8' }, 'prefix-tokens': { type: 'string', default: '1500' } },
});
const repeats = Number(opt.repeats);

async function measure(flags) {
  const server = await startServer(['--served-model-name', 'demo', ...flags]);
  try {
    const client = server.client();
    // A long, code-like prefix of about `prefix-tokens` tokens.
    let prefix = '';
    for (let i = 0; prefix.length < Number(opt['prefix-tokens']) * 3; i++)
      prefix += `def helper_${i}(value):\n    return value * ${i} + ${i % 7}\n\n`;
    const ttfts = [];
    for (let r = 0; r < repeats; r++) {
      const start = performance.now();
      const stream = await client.completions.create({
        model: 'demo', prompt: `${prefix}# request ${r}\ndef main():\n`, max_tokens: 2, temperature: 0, stream: true,
      });
      let first = null;
      for await (const chunk of stream) if (first === null && chunk.choices.length) first = performance.now();
      ttfts.push(first - start);
    }
    const m = parseMetrics(await (await fetch(`${server.url}/metrics`)).text());
    const sorted = ttfts.slice(1).sort((a, b) => a - b);
    return {
      flags: flags.join(' ') || '(default)',
      cold_ttft_ms: Math.round(ttfts[0]),
      warm_ttft_ms_median: Math.round(sorted[Math.floor(sorted.length / 2)]),
      prompt_tokens: m['vllm:prompt_tokens_total{model_name="demo"}'] / repeats,
      prefix_cache_queries: m['vllm:prefix_cache_queries_total{model_name="demo"}'],
      prefix_cache_hits: m['vllm:prefix_cache_hits_total{model_name="demo"}'],
    };
  } finally {
    await server.stop();
  }
}

const results = [await measure(['--no-enable-prefix-caching']), await measure(['--enable-prefix-caching'])];
console.log(JSON.stringify(results, null, 2));
