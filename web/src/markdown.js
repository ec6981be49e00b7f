// Markdown for the model's answers: marked, with raw HTML shown as text (never interpreted: the
// text comes from a model), only http(s) and relative links, and code blocks highlighted by
// highlight.js with a handful of languages (each costs page weight).
import { Marked } from 'marked';
import hljs from 'highlight.js/lib/core';
import bash from 'highlight.js/lib/languages/bash';
import cpp from 'highlight.js/lib/languages/cpp';
import javascript from 'highlight.js/lib/languages/javascript';
import json from 'highlight.js/lib/languages/json';
import python from 'highlight.js/lib/languages/python';
import rust from 'highlight.js/lib/languages/rust';

for (const [name, lang] of Object.entries({ bash, cpp, javascript, json, python, rust })) hljs.registerLanguage(name, lang);
hljs.registerAliases(['sh', 'shell'], { languageName: 'bash' });
hljs.registerAliases(['c', 'c++', 'cc', 'h'], { languageName: 'cpp' });
hljs.registerAliases(['js', 'mjs'], { languageName: 'javascript' });
hljs.registerAliases(['py'], { languageName: 'python' });

export function escapeHtml(s) {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

const marked = new Marked({
  gfm: true,
  breaks: false,
  renderer: {
    html({ text }) {
      return escapeHtml(text);
    },
    code({ text, lang }) {
      const name = (lang || '').trim().split(/\s+/)[0].toLowerCase();
      const body = name && hljs.getLanguage(name) ? hljs.highlight(text, { language: name }).value : escapeHtml(text);
      return `<pre><code class="hljs">${body}</code></pre>\n`;
    },
    link({ href, title, tokens }) {
      const label = this.parser.parseInline(tokens);
      if (!/^(https?:|\/|#)/i.test(href || '')) return label;
      const t = title ? ` title="${escapeHtml(title)}"` : '';
      return `<a href="${escapeHtml(href)}"${t} rel="noopener noreferrer" target="_blank">${label}</a>`;
    },
    image({ text }) {
      return escapeHtml(text || '');
    },
  },
});

export function renderMarkdown(text) {
  return marked.parse(text);
}
