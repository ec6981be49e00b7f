// Small SVG helpers (elements are built through the DOM: the CSP allows no inline markup tricks).
const NS = 'http://www.w3.org/2000/svg';

export function svg(tag, attrs = {}, parent) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (parent) parent.appendChild(el);
  return el;
}

// A sparkline of `values` (nulls are gaps) scaled to [0, max]; decorative, the number is beside it.
export function sparkline(values, max) {
  const w = 100, h = 24;
  const el = svg('svg', { viewBox: `0 0 ${w} ${h}`, class: 'spark', 'aria-hidden': 'true', preserveAspectRatio: 'none' });
  const top = max ?? Math.max(1e-9, ...values.filter((v) => v != null));
  let run = [];
  const flush = () => {
    // A lone sample (between gaps) is drawn as a short dash so it is not lost.
    if (run.length === 1) {
      const [x, y] = run[0].split(',').map(Number);
      run = [`${Math.max(0, x - 2)},${y}`, `${Math.min(w, x + 2)},${y}`];
    }
    if (run.length > 1) svg('polyline', { points: run.join(' '), fill: 'none' }, el);
    run = [];
  };
  const n = Math.max(values.length - 1, 1);
  values.forEach((v, i) => {
    if (v == null || !isFinite(v)) return flush();
    const x = (i / n) * w;
    const y = h - 1 - (Math.min(v, top) / top) * (h - 2);
    run.push(`${x.toFixed(1)},${y.toFixed(1)}`);
  });
  flush();
  return el;
}

// A chart of one value per setting with a whisker per interval: points [{label, value, low, high}]
// (value null: no point). Each drawn point is a <circle class="point">.
export function intervalChart(title, points, { unit = '', max, format = (v) => v.toFixed(1) } = {}) {
  const W = 340, H = 220, L = 48, R = 10, T = 28, B = 36;
  const el = svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-label': title });
  svg('title', {}, el).textContent = title;
  const text = (x, y, s, cls, anchor = 'middle') => {
    const t = svg('text', { x, y, class: cls, 'text-anchor': anchor }, el);
    t.textContent = s;
    return t;
  };
  text(L, 16, title, 'chart-title', 'start');
  const top = max ?? niceCeiling(Math.max(1e-9, ...points.flatMap((p) => [p.high ?? p.value ?? 0, p.value ?? 0])));
  const y = (v) => T + (H - T - B) * (1 - v / top);
  for (let i = 0; i <= 4; i++) {
    const v = (top * i) / 4;
    svg('line', { x1: L, x2: W - R, y1: y(v), y2: y(v), class: 'grid' }, el);
    text(L - 6, y(v) + 4, format(v) + unit, 'tick', 'end');
  }
  const step = (W - L - R) / Math.max(points.length, 1);
  points.forEach((p, i) => {
    const x = L + step * (i + 0.5);
    text(x, H - B + 16, p.label, 'tick');
    if (p.value == null || !isFinite(p.value)) return;
    if (p.low != null && p.high != null && isFinite(p.low) && isFinite(p.high)) {
      svg('line', { x1: x, x2: x, y1: y(p.low), y2: y(p.high), class: 'whisker' }, el);
      for (const v of [p.low, p.high]) svg('line', { x1: x - 5, x2: x + 5, y1: y(v), y2: y(v), class: 'whisker' }, el);
    }
    const c = svg('circle', { cx: x, cy: y(p.value), r: 4.5, class: 'point' }, el);
    svg('title', {}, c).textContent = `${p.label}: ${format(p.value)}${unit}` +
      (p.low != null && isFinite(p.low) ? ` (95 %: ${format(p.low)}–${format(p.high)}${unit})` : '');
  });
  return el;
}

// The smallest of 1, 2, 2.5, 5 or 10 × a power of ten that is ≥ v, so the four gridlines fall on
// round numbers.
function niceCeiling(v) {
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}
