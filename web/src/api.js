// Talking to tandem serve: the API key (kept in localStorage, asked for on a 401), JSON calls and
// the SSE stream of a chat completion.
const KEY = 'tandem.apiKey';

export function apiKey() {
  return localStorage.getItem(KEY) || '';
}
export function setApiKey(key) {
  if (key) localStorage.setItem(KEY, key);
  else localStorage.removeItem(KEY);
}

export class AuthError extends Error {}

function headers(json) {
  const h = {};
  if (json) h['Content-Type'] = 'application/json';
  const key = apiKey();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function check(res) {
  if (res.status === 401) throw new AuthError('the server wants an API key');
  if (!res.ok) {
    let message = `HTTP ${res.status}`;
    try {
      const body = await res.json();
      if (body?.error?.message) message = body.error.message;
    } catch {}
    throw new Error(message);
  }
  return res;
}

export async function getJson(path) {
  return (await check(await fetch(path, { headers: headers(false) }))).json();
}

export async function postJson(path, body, signal) {
  const res = await fetch(path, { method: 'POST', headers: headers(true), body: JSON.stringify(body), signal });
  return (await check(res)).json();
}

export async function getText(path) {
  return (await check(await fetch(path))).text();
}

// Streams a chat completion; calls onChunk(parsed JSON) per SSE event until [DONE]. Aborting
// `signal` closes the connection, which aborts the request in the server.
export async function streamChat(body, signal, onChunk) {
  const res = await check(
    await fetch('/v1/chat/completions', { method: 'POST', headers: headers(true), body: JSON.stringify(body), signal }),
  );
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split('\n')) {
        if (!line.startsWith('data:')) continue;
        const data = line.slice(5).trim();
        if (data === '[DONE]') return;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message || 'server error');
        onChunk(chunk);
      }
    }
  }
}

// Prometheus text → {"name{labels}": value} plus grouped access by metric name.
export function parseMetrics(text) {
  const samples = [];
  for (const line of text.split('\n')) {
    if (!line || line[0] === '#') continue;
    const m = line.match(/^([^{\s]+)(\{[^}]*\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    if (m[2]) for (const l of m[2].slice(1, -1).matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  const sum = (name, filter = () => true) =>
    samples.filter((s) => s.name === name && filter(s.labels)).reduce((a, s) => a + s.value, 0);
  const all = (name) => samples.filter((s) => s.name === name);
  return { samples, sum, all };
}
