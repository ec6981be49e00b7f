// The page tandem serve serves at /: wires the chat, the live metrics panel, the sweep tab and the
// API-key dialog together.
import './style.css';
import { AuthError, apiKey, getJson, setApiKey } from './api.js';
import { Chat } from './chat.js';
import { configuredK, startMetrics } from './metrics.js';
import { setupSweep } from './sweep.js';

const $ = (id) => document.getElementById(id);
let model = '';

function askKey() {
  const dialog = $('key-dialog');
  if (dialog.open) return;
  $('key-input').value = apiKey();
  dialog.showModal();
}

$('key-dialog').addEventListener('close', () => {
  if ($('key-dialog').returnValue === 'save') {
    setApiKey($('key-input').value.trim());
    loadModel();
  }
});
$('key-button').addEventListener('click', askKey);

async function loadModel() {
  try {
    const list = await getJson('/v1/models');
    model = list.data?.[0]?.id || '';
    $('model').textContent = model ? `model: ${model}` : 'no model';
  } catch (e) {
    $('model').textContent = e instanceof AuthError ? 'API key needed' : `error: ${e.message}`;
    if (e instanceof AuthError) askKey();
  }
}

// Tabs: arrow keys move between them (WAI-ARIA tabs pattern).
const tabs = [$('tab-chat'), $('tab-sweep')];
function select(tab) {
  for (const t of tabs) {
    const on = t === tab;
    t.setAttribute('aria-selected', String(on));
    t.tabIndex = on ? 0 : -1;
    $(t.getAttribute('aria-controls')).hidden = !on;
  }
  tab.focus();
}
tabs.forEach((t, i) => {
  t.addEventListener('click', () => select(t));
  t.addEventListener('keydown', (e) => {
    if (e.key === 'ArrowRight' || e.key === 'ArrowLeft') {
      e.preventDefault();
      select(tabs[(i + (e.key === 'ArrowRight' ? 1 : tabs.length - 1)) % tabs.length]);
    }
  });
});

new Chat(
  {
    composer: $('composer'), prompt: $('prompt'), send: $('send'), stop: $('stop'), messages: $('messages'),
    conversations: $('conversations'), newChat: $('new-chat'), deleteChat: $('delete-chat'),
    system: $('system'), temperature: $('temperature'), topP: $('top-p'), maxTokens: $('max-tokens'),
    specK: $('spec-k'), logprobs: $('logprobs'),
  },
  { model: () => model, onAuth: askKey },
);
setupSweep(
  {
    form: $('sweep-form'), k: $('sweep-k'), iterations: $('sweep-iterations'), maxTokens: $('sweep-max-tokens'),
    prompts: $('sweep-prompts'), run: $('sweep-run'), status: $('sweep-status'), charts: $('sweep-charts'),
    table: $('sweep-table'),
  },
  { onAuth: askKey },
);
startMetrics($('stats'), $('positions'));
configuredK().then((k) => {
  // The request's k may be 0..k; empty means the server's default.
  $('spec-k').max = String(k);
  $('spec-k').placeholder = k ? `server default (${k})` : 'off';
  $('sweep-k').max = String(Math.max(k, 1));
  if (k && Number($('sweep-k').value) > k) $('sweep-k').value = String(k);
  if (!k) $('sweep-run').disabled = true;
}, () => {});
loadModel();
