// The chat: conversations in localStorage, a streamed answer per turn (stop = abort the fetch,
// which closes the connection and aborts the request in the server), and each answer shown either
// as Markdown or as its tokens shaded by how the engine produced them (stream_options
// tandem_spec_trace, docs/API.md).
import { AuthError, streamChat } from './api.js';
import { renderMarkdown } from './markdown.js';

const STORE = 'tandem.conversations';
const CURRENT = 'tandem.current';
const KEEP = 30;  // conversations kept

const KIND_LABEL = {
  draft: 'accepted draft',
  bonus: 'bonus token (target, all drafts accepted)',
  correction: 'correction (target, replaced a rejected draft)',
  target: 'target token (no drafts this step)',
};

function load() {
  try {
    const list = JSON.parse(localStorage.getItem(STORE) || '[]');
    return Array.isArray(list) ? list : [];
  } catch {
    return [];
  }
}

export class Chat {
  constructor(el, { model, onAuth }) {
    this.el = el;
    this.model = model;
    this.onAuth = onAuth;
    this.conversations = load();
    this.current = localStorage.getItem(CURRENT);
    if (!this.conversations.some((c) => c.id === this.current)) this.newConversation(false);
    this.controller = null;
    el.composer.addEventListener('submit', (e) => {
      e.preventDefault();
      this.send();
    });
    el.prompt.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        this.send();
      }
    });
    el.stop.addEventListener('click', () => this.controller?.abort());
    // Escape stops the answer from anywhere on the page (the keyboard's stop button).
    document.addEventListener('keydown', (e) => {
      if (e.key === 'Escape' && this.controller && !document.querySelector('dialog[open]')) this.controller.abort();
    });
    el.newChat.addEventListener('click', () => this.newConversation(true));
    el.deleteChat.addEventListener('click', () => this.deleteConversation());
    el.conversations.addEventListener('change', () => {
      this.current = el.conversations.value;
      this.save();
      this.render();
    });
    this.render();
  }

  conversation() {
    return this.conversations.find((c) => c.id === this.current);
  }

  newConversation(render) {
    const c = { id: `c${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`, title: 'New chat', messages: [] };
    this.conversations.unshift(c);
    this.current = c.id;
    if (render) {
      this.save();
      this.render();
      this.el.prompt.focus();
    }
  }

  deleteConversation() {
    this.conversations = this.conversations.filter((c) => c.id !== this.current);
    if (!this.conversations.length) this.newConversation(false);
    this.current = this.conversations[0].id;
    this.save();
    this.render();
  }

  save() {
    this.conversations = this.conversations.slice(0, KEEP);
    try {
      localStorage.setItem(STORE, JSON.stringify(this.conversations));
      localStorage.setItem(CURRENT, this.current);
    } catch {
      // Storage full: drop the oldest conversations until it fits.
      while (this.conversations.length > 1) {
        this.conversations.pop();
        try {
          localStorage.setItem(STORE, JSON.stringify(this.conversations));
          break;
        } catch {}
      }
    }
  }

  render() {
    const sel = this.el.conversations;
    sel.replaceChildren(...this.conversations.map((c) => new Option(c.title, c.id, false, c.id === this.current)));
    this.el.messages.replaceChildren(...this.conversation().messages.map((m) => this.messageElement(m)));
  }

  messageElement(m) {
    const li = document.createElement('li');
    li.className = `msg ${m.role}`;
    li.dataset.state = m.state || 'done';
    const head = document.createElement('div');
    head.className = 'msg-head';
    const role = document.createElement('span');
    role.className = 'role';
    role.textContent = m.role === 'user' ? 'You' : 'Model';
    head.appendChild(role);
    const body = document.createElement('div');
    body.className = 'body';
    const stats = document.createElement('p');
    stats.className = 'msg-stats';
    li.append(head, body, stats);
    if (m.role === 'assistant' && m.trace) {
      const toggle = document.createElement('button');
      toggle.type = 'button';
      toggle.className = 'plain view-toggle';
      head.appendChild(toggle);
      toggle.addEventListener('click', () => {
        m.view = m.view === 'markdown' ? 'tokens' : 'markdown';
        this.fill(li, m);
        this.save();
      });
    }
    this.fill(li, m);
    return li;
  }

  // (Re)draws a message's body and stats line.
  fill(li, m) {
    li.dataset.state = m.state || 'done';
    const body = li.querySelector('.body');
    const toggle = li.querySelector('.view-toggle');
    const tokens = m.role === 'assistant' && m.trace && m.view !== 'markdown';
    if (toggle) {
      toggle.textContent = tokens ? 'Show Markdown' : 'Show tokens';
      toggle.setAttribute('aria-label', tokens ? 'Show this answer as Markdown' : 'Show the tokens of this answer');
    }
    body.classList.toggle('tokens', !!tokens);
    if (m.role === 'user') {
      body.textContent = m.content;
    } else if (tokens) {
      body.replaceChildren();
      this.appendTokens(body, m.trace);
    } else {
      body.innerHTML = renderMarkdown(m.content || '');
    }
    const s = li.querySelector('.msg-stats');
    s.textContent = m.role === 'assistant' ? statsLine(m) : '';
  }

  appendTokens(body, entries) {
    const frag = document.createDocumentFragment();
    for (const e of entries) {
      const span = document.createElement('span');
      span.className = `tok tok-${e.kind}`;
      span.textContent = e.token;
      let title = `round ${e.round}, position ${e.position}: ${KIND_LABEL[e.kind] || e.kind}`;
      if (e.logprob != null) title += `, logprob ${e.logprob.toFixed(3)}`;
      span.title = title;
      frag.appendChild(span);
    }
    body.appendChild(frag);
  }

  settings() {
    const num = (el) => (el.value === '' ? null : Number(el.value));
    return {
      system: this.el.system.value.trim(),
      temperature: num(this.el.temperature),
      top_p: num(this.el.topP),
      max_tokens: num(this.el.maxTokens),
      k: num(this.el.specK),
      logprobs: this.el.logprobs.checked,
    };
  }

  async send() {
    const text = this.el.prompt.value.trim();
    if (!text || this.controller) return;
    const conv = this.conversation();
    if (!conv.messages.length) conv.title = text.slice(0, 40);
    const s = this.settings();
    const history = conv.messages.filter((m) => m.content).map((m) => ({ role: m.role, content: m.content }));
    const user = { role: 'user', content: text };
    const answer = { role: 'assistant', content: '', trace: [], state: 'streaming', view: 'tokens', started: Date.now() };
    conv.messages.push(user, answer);
    this.el.prompt.value = '';
    this.render();
    const li = this.el.messages.lastElementChild;
    const body = {
      model: this.model(),
      messages: [...(s.system ? [{ role: 'system', content: s.system }] : []), ...history, user],
      stream: true,
      stream_options: { include_usage: true, tandem_spec_trace: true },
    };
    if (s.temperature != null) body.temperature = s.temperature;
    if (s.top_p != null) body.top_p = s.top_p;
    if (s.max_tokens != null) body.max_tokens = s.max_tokens;
    if (s.k != null) body.speculative = { num_speculative_tokens: s.k };
    if (s.logprobs) body.logprobs = true;

    this.controller = new AbortController();
    this.el.stop.disabled = false;
    this.el.send.disabled = true;
    let pending = false;
    const redraw = () => {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => {
        pending = false;
        // Follow the answer while the reader is at the bottom of the page.
        const follow = window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 40;
        this.fill(li, answer);
        if (follow) window.scrollTo(0, document.documentElement.scrollHeight);
      });
    };
    try {
      await streamChat(body, this.controller.signal, (chunk) => {
        if (chunk.usage) answer.usage = chunk.usage;
        const choice = chunk.choices?.[0];
        if (!choice) return;
        if (choice.delta?.content) answer.content += choice.delta.content;
        if (choice.tandem_spec_trace) answer.trace.push(...choice.tandem_spec_trace);
        if (choice.finish_reason) answer.finish = choice.finish_reason;
        redraw();
      });
      answer.state = 'done';
    } catch (e) {
      if (e.name === 'AbortError') {
        answer.state = 'stopped';
      } else {
        answer.state = 'error';
        answer.error = e.message;
        if (e instanceof AuthError) this.onAuth();
      }
    } finally {
      answer.seconds = (Date.now() - answer.started) / 1000;
      this.controller = null;
      this.el.stop.disabled = true;
      this.el.send.disabled = false;
      this.fill(li, answer);
      this.save();
    }
  }
}

function statsLine(m) {
  const parts = [];
  if (m.trace?.length) {
    const drafts = m.trace.filter((e) => e.kind === 'draft').length;
    const steps = new Set(m.trace.map((e) => e.round)).size;
    parts.push(`${m.trace.length} tokens in ${steps} steps`, `${drafts} accepted drafts`);
    if (m.seconds > 0) parts.push(`${(m.trace.length / m.seconds).toFixed(1)} tok/s`);
  }
  if (m.state === 'streaming') parts.push('streaming…');
  if (m.state === 'stopped') parts.push('stopped');
  if (m.finish === 'length') parts.push('hit max tokens');
  if (m.state === 'error') parts.push(`error: ${m.error}`);
  return parts.join(' · ');
}
