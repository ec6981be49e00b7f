// Bundles the page into OUT_DIR: index.html, app.js (src/app.js and its npm imports, minified),
// app.css and licenses.txt. CMake embeds these files into the binary (cmake/embed_assets.cmake).
//   node build.mjs OUT_DIR
import { build } from 'esbuild';
import { copyFileSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = process.argv[2];
if (!out) throw new Error('usage: node build.mjs OUT_DIR');
mkdirSync(out, { recursive: true });

await build({
  // src/app.js imports src/style.css, which esbuild writes next to it as app.css.
  entryPoints: { app: join(here, 'src/app.js') },
  outdir: out,
  bundle: true,
  minify: true,
  format: 'iife',
  target: ['es2020'],
  legalComments: 'none',
  logLevel: 'warning',
});
copyFileSync(join(here, 'src/index.html'), join(out, 'index.html'));
// The bundled packages' licenses ask for their notices to travel with the code: served as
// /licenses.txt and linked from the page.
const notices = [
  ['marked', 'node_modules/marked/LICENSE'],
  ['highlight.js', 'node_modules/highlight.js/LICENSE'],
].map(([name, path]) => `${name}\n${'='.repeat(name.length)}\n\n${readFileSync(join(here, path), 'utf8').trim()}\n`);
writeFileSync(join(out, 'licenses.txt'), `Third-party code in this page\n\n${notices.join('\n')}`);

// The budget for the whole page: keep it small (every byte is in the binary).
const total = ['index.html', 'app.js', 'app.css', 'licenses.txt'].reduce((n, f) => n + statSync(join(out, f)).size, 0);
if (total > 300 * 1024) throw new Error(`the page is ${total} bytes, over the 300 KB budget`);
console.log(`web page: ${total} bytes`);
