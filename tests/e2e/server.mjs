// Starts a real `tandem serve` ($TANDEM_BINARY) on a free loopback port and stops it.
import { spawn } from 'node:child_process';
import OpenAI from 'openai';

export const BINARY = process.env.TANDEM_BINARY;
if (!BINARY) throw new Error('set TANDEM_BINARY to the tandem executable (tests/e2e/run.sh does)');

// Starts the server with extra flags; resolves once it listens. With no model argument it serves
// the bundled model with its drafter (speculation on, k = 3). $TANDEM_E2E_DEVICE (cpu, cuda) pins
// the backend; unset, serve picks its default (cuda when a GPU is present). On a GPU each server
// takes a fifth of its memory, not vLLM's default 0.9: some tests run a second server beside the first.
const DEVICE = process.env.TANDEM_E2E_DEVICE
  ? ['--device', process.env.TANDEM_E2E_DEVICE,
     ...(process.env.TANDEM_E2E_DEVICE === 'cuda' ? ['--gpu-memory-utilization', '0.2'] : [])]
  : [];
export async function startServer(args = [], { timeoutMs = 60000, env } = {}) {
  const proc = spawn(BINARY, ['serve', '--host', '127.0.0.1', '--port', '0', ...DEVICE, ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: env ? { ...process.env, ...env } : process.env,
  });
  let log = '';
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`tandem serve did not start:\n${log}`)), timeoutMs);
    proc.stderr.on('data', (d) => {
      log += d.toString();
      const m = log.match(/listening on (http:\/\/127\.0\.0\.1:\d+)/);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    proc.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`tandem serve exited with ${code}:\n${log}`));
    });
  });
  const server = {
    proc,
    url,
    log: () => log,
    client: (opts = {}) => new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0, ...opts }),
    async stop() {
      if (proc.exitCode !== null) return proc.exitCode;
      const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve(code ?? signal)));
      proc.kill('SIGTERM');
      return exited;
    },
  };
  return server;
}

export async function postJson(url, body, headers = {}) {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {}
  return { status: res.status, json, text };
}

// Parses Prometheus text into {"name{labels}": value}.
export function parseMetrics(text) {
  const out = {};
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    out[line.slice(0, i)] = Number(line.slice(i + 1));
  }
  return out;
}

export async function metrics(url) {
  const res = await fetch(`${url}/metrics`);
  return { text: await res.text(), status: res.status };
}
