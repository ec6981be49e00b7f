// The sweep tab: POST /tandem/sweep runs `tandem bench sweep --endpoint`'s code against this server
// (baseline and k = 1..N over the prompts) and answers with the report's JSON; drawn here as tok/s
// (median, 95 % interval of the median) and acceptance rate per setting.
import { AuthError, postJson } from './api.js';
import { intervalChart } from './svg.js';

// Wilson score interval (95 %) for `accepted` of `n` draft tokens. It treats draft tokens as
// independent trials, which they are not quite (a rejection ends the round); a guide, not a proof.
function wilson(accepted, n) {
  if (!(n > 0)) return [null, null];
  const z = 1.96, p = accepted / n, z2 = z * z;
  const centre = (p + z2 / (2 * n)) / (1 + z2 / n);
  const half = (z * Math.sqrt((p * (1 - p)) / n + z2 / (4 * n * n))) / (1 + z2 / n);
  return [Math.max(0, centre - half), Math.min(1, centre + half)];
}

export function setupSweep(el, { onAuth }) {
  el.form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const maxK = Number(el.k.value);
    const body = {
      ks: Array.from({ length: maxK + 1 }, (_, i) => i),
      iterations: Number(el.iterations.value),
      max_tokens: Number(el.maxTokens.value),
      prompts: el.prompts.value.split('\n').map((s) => s.trim()).filter(Boolean),
    };
    el.run.disabled = true;
    const t0 = Date.now();
    const tick = () => (el.status.textContent = `Running ${body.ks.length} settings × ${body.prompts.length} prompts × ${body.iterations} iterations… ${Math.round((Date.now() - t0) / 1000)} s`);
    tick();
    const timer = setInterval(tick, 1000);
    try {
      const report = await postJson('/tandem/sweep', body);
      el.status.textContent = `Done in ${((Date.now() - t0) / 1000).toFixed(1)} s.`;
      draw(el, report);
    } catch (err) {
      el.status.textContent = `Sweep failed: ${err.message}`;
      if (err instanceof AuthError) onAuth();
    } finally {
      clearInterval(timer);
      el.run.disabled = false;
    }
  });
}

function draw(el, report) {
  const rows = report.settings;
  const tok = rows.map((r) => ({ label: r.setting, value: r.tok_s_median, low: r.tok_s_ci95?.[0], high: r.tok_s_ci95?.[1] }));
  const acc = rows.filter((r) => r.k > 0).map((r) => {
    const [low, high] = wilson(r.num_accepted_tokens, r.num_draft_tokens);
    return { label: r.setting, value: r.acceptance_rate, low, high };
  });
  el.charts.replaceChildren(
    intervalChart('Throughput (tok/s, median)', tok, { format: (v) => v.toFixed(0) }),
    intervalChart('Acceptance rate', acc, { max: 1, format: (v) => `${Math.round(100 * v)}`, unit: ' %' }),
  );
  const table = document.createElement('table');
  const head = table.createTHead().insertRow();
  for (const h of ['setting', 'tok/s', '95 % CI', 'speedup', 'acceptance', 'mean accept. length', 'draft / verify time']) {
    const th = document.createElement('th');
    th.scope = 'col';
    th.textContent = h;
    head.appendChild(th);
  }
  const body = table.createTBody();
  const pct = (v) => (v == null ? '–' : `${(100 * v).toFixed(0)} %`);
  for (const r of rows) {
    const tr = body.insertRow();
    for (const v of [
      r.setting,
      r.tok_s_median?.toFixed(1),
      r.tok_s_ci95?.[0] == null ? '–' : `${r.tok_s_ci95[0].toFixed(1)}–${r.tok_s_ci95[1].toFixed(1)}`,
      r.speedup == null ? '–' : `${r.speedup.toFixed(2)}×`,
      pct(r.acceptance_rate),
      r.mean_acceptance_length == null ? '–' : r.mean_acceptance_length.toFixed(2),
      r.k === 0 || r.draft_share == null ? '–' : `${pct(r.draft_share)} / ${pct(r.verify_share)}`,
    ])
      tr.insertCell().textContent = v ?? '–';
  }
  const wrap = document.createElement('div');
  wrap.className = 'table-wrap';
  wrap.appendChild(table);
  const note = document.createElement('p');
  note.className = 'note';
  note.textContent = 'Acceptance whiskers: Wilson 95 % interval over draft tokens, treated as independent trials.';
  el.table.replaceChildren(wrap, note);
}
