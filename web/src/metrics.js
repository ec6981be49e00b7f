// The live panel: polls /metrics (vLLM's names, plus tandem's draft / verify seconds) and shows
// rates over the last poll interval with sparklines of the last 5 minutes.
import { getText, parseMetrics } from './api.js';
import { sparkline } from './svg.js';

const PERIOD_MS = 2000;
const HISTORY = 150;  // 5 minutes of 2 s samples

const ROWS = [
  ['tok_s', 'Generation', (v) => (v == null ? '–' : `${v.toFixed(1)} tok/s`)],
  ['accept', 'Acceptance (now)', (v) => (v == null ? '–' : `${(100 * v).toFixed(0)} %`), 1],
  ['accept_all', 'Acceptance (overall)', (v) => (v == null ? '–' : `${(100 * v).toFixed(1)} %`), 1],
  ['mal', 'Mean accept. length', (v) => (v == null ? '–' : v.toFixed(2))],
  ['draft_share', 'Draft / verify time', (v) => (v == null ? '–' : `${(100 * v).toFixed(0)} / ${(100 - 100 * v).toFixed(0)} %`), 1],
  ['running', 'Running / waiting', null],
  ['kv', 'KV cache usage', (v) => (v == null ? '–' : `${(100 * v).toFixed(1)} %`), 1],
  ['aborted', 'Aborted requests', (v) => (v == null ? '–' : String(v))],
];

export function startMetrics(dl, positionsEl) {
  const history = Object.fromEntries(ROWS.map(([key]) => [key, []]));
  const cells = {};
  for (const [key, label] of ROWS) {
    const dt = document.createElement('dt');
    dt.textContent = label;
    const dd = document.createElement('dd');
    dd.id = `metric-${key}`;
    const value = document.createElement('span');
    value.className = 'value';
    dd.appendChild(value);
    dl.append(dt, dd);
    cells[key] = { dd, value };
  }
  let last = null;
  const push = (key, v) => {
    const h = history[key];
    h.push(v);
    if (h.length > HISTORY) h.shift();
  };

  async function poll() {
    let m;
    try {
      m = parseMetrics(await getText('/metrics'));
    } catch {
      dl.classList.add('stale');
      return;
    }
    dl.classList.remove('stale');
    const now = performance.now() / 1000;
    const cur = {
      t: now,
      gen: m.sum('vllm:generation_tokens_total'),
      drafts: m.sum('vllm:spec_decode_num_drafts_total'),
      draftTokens: m.sum('vllm:spec_decode_num_draft_tokens_total'),
      accepted: m.sum('vllm:spec_decode_num_accepted_tokens_total'),
      draftS: m.sum('tandem:spec_decode_draft_seconds_total'),
      verifyS: m.sum('tandem:spec_decode_verify_seconds_total'),
    };
    const values = {
      running: m.sum('vllm:num_requests_running'),
      waiting: m.sum('vllm:num_requests_waiting'),
      kv: m.sum('vllm:kv_cache_usage_perc'),
      aborted: m.sum('vllm:request_success_total', (l) => l.finished_reason === 'abort'),
      accept_all: cur.draftTokens > 0 ? cur.accepted / cur.draftTokens : null,
      mal: cur.drafts > 0 ? 1 + cur.accepted / cur.drafts : null,
      draft_share: cur.draftS + cur.verifyS > 0 ? cur.draftS / (cur.draftS + cur.verifyS) : null,
      tok_s: null,
      accept: null,
    };
    if (last) {
      const dt = cur.t - last.t;
      values.tok_s = dt > 0 ? Math.max(0, cur.gen - last.gen) / dt : null;
      const dd = cur.draftTokens - last.draftTokens;
      values.accept = dd > 0 ? (cur.accepted - last.accepted) / dd : null;
    }
    last = cur;
    for (const [key, , fmt, max] of ROWS) {
      push(key, values[key]);
      const { dd, value } = cells[key];
      value.textContent = key === 'running' ? `${values.running} / ${values.waiting}` : fmt(values[key]);
      dd.querySelector('svg')?.remove();
      if (key !== 'aborted' && key !== 'mal') dd.appendChild(sparkline(history[key], max));
    }
    // Acceptance per draft position (overall): accepted at position i / rounds.
    const per = m.all('vllm:spec_decode_num_accepted_tokens_per_pos_total')
      .map((s) => ({ pos: Number(s.labels.position), v: s.value }))
      .sort((a, b) => a.pos - b.pos);
    positionsEl.replaceChildren();
    for (const { pos, v } of per) {
      const rate = cur.drafts > 0 ? v / cur.drafts : 0;
      const row = document.createElement('div');
      row.className = 'pos';
      const label = document.createElement('span');
      label.textContent = `#${pos + 1}`;
      const bar = document.createElement('span');
      bar.className = 'bar';
      const fill = document.createElement('span');
      fill.className = 'fill';
      fill.style.width = `${(100 * rate).toFixed(1)}%`;
      bar.appendChild(fill);
      const pct = document.createElement('span');
      pct.textContent = cur.drafts > 0 ? `${(100 * rate).toFixed(0)} %` : '–';
      row.append(label, bar, pct);
      positionsEl.appendChild(row);
    }
    if (!per.length) positionsEl.textContent = 'Speculation is off.';
  }
  poll();
  setInterval(poll, PERIOD_MS);
}

// The server's configured k: /metrics lists one per-position counter per draft position.
export async function configuredK() {
  const m = parseMetrics(await getText('/metrics'));
  return m.all('vllm:spec_decode_num_accepted_tokens_per_pos_total').length;
}
