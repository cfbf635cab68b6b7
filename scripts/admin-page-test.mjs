// Headless-Chromium test of the /admin status page (crates/server/src/ops/admin.html).
//
//   node scripts/admin-page-test.mjs <base-url> [options]
//
//   <base-url>              a running server under load, e.g. http://127.0.0.1:8080
//   --admin-file FILE       serve FILE at /admin through a local proxy that forwards everything
//                           else to the server (for a binary built before the page changed)
//   --auth-url URL          a second server with auth on: test the admin-key form too, with the
//                           keys from the environment: ADMIN_KEY (admin) and READONLY_KEY (optional)
//   --expect-tcp            the server also gets TCP load: TCP requests/s must be non-zero
//   --seconds N             how long to watch the page refresh (default 5)
//   --screenshot FILE       save a screenshot of the page (after the watch)
//   --chromium PATH         browser binary (default /usr/bin/chromium)
//
// Exits 0 when every check passed, 1 otherwise. Needs playwright-core (scripts/package.json).
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import http from 'node:http';
import { parseArgs } from 'node:util';

const { values: opt, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    'admin-file': { type: 'string' },
    'auth-url': { type: 'string' },
    'expect-tcp': { type: 'boolean', default: false },
    seconds: { type: 'string', default: '5' },
    screenshot: { type: 'string' },
    chromium: { type: 'string', default: '/usr/bin/chromium' },
  },
});
if (positionals.length !== 1) {
  console.error('usage: node admin-page-test.mjs <base-url> [--admin-file FILE] [--auth-url URL] ' +
    '[--expect-tcp] [--seconds N] [--screenshot FILE]');
  process.exit(2);
}
const SECONDS = Math.max(2, Number(opt.seconds) || 5);

let failures = 0;
function check(ok, what, detail) {
  if (ok) console.log(`ok   - ${what}`);
  else { failures++; console.log(`FAIL - ${what}${detail !== undefined ? ': ' + detail : ''}`); }
  return ok;
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Serves `file` at /admin (read on every request) and forwards every other request to `target`.
function startProxy(target, file) {
  const up = new URL(target);
  const server = http.createServer((req, res) => {
    if (req.method === 'GET' && req.url.split('?')[0] === '/admin') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-cache' });
      res.end(fs.readFileSync(file));
      return;
    }
    const fwd = http.request({
      host: up.hostname, port: up.port, method: req.method, path: req.url,
      headers: { ...req.headers, host: up.host },
    }, (r) => { res.writeHead(r.statusCode, r.headers); r.pipe(res); });
    fwd.on('error', (e) => { res.writeHead(502); res.end(String(e)); });
    req.pipe(fwd);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => {
    resolve({ url: `http://127.0.0.1:${server.address().port}`, close: () => server.close() });
  }));
}

// What the page shows now, read from its DOM and its test hook.
const readState = (page) => page.evaluate(() => {
  const A = window.__dmwAdmin || {};
  const latest = (id) => document.getElementById('chart-' + id)?.dataset.latest ?? null;
  const text = (id) => document.getElementById(id)?.textContent ?? null;
  return {
    ticks: A.ticks, errors: A.errors, lastError: A.lastError,
    httpRps: latest('http-rps'), tcpRps: latest('tcp-rps'), mem: latest('mem'),
    httpP50: text('val-http-p50') && document.getElementById('val-http-p50').dataset.value,
    httpP99: text('val-http-p99') && document.getElementById('val-http-p99').dataset.value,
    memText: text('val-mem-rss'), l1Bytes: document.getElementById('val-mem-l1')?.dataset.value,
    cacheL1: text('val-cache-l1'), invalP99: text('val-inval-p99'), poolMax: text('val-pool-max'),
    statusClass: document.getElementById('status')?.className, status: text('status'),
    version: text('version'), uptime: text('uptime'), health: text('health'),
    keyFormShown: document.getElementById('keyform')?.classList.contains('shown'),
    httpPoints: (A.series?.['http.rps'] || []).length,
  };
});

// Pixels of the first series' colour (#4ea1ff) on a chart: did it draw a line at all?
const linePixels = (page, id) => page.evaluate((id) => {
  const c = document.getElementById('chart-' + id);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (Math.abs(d[i] - 0x4e) < 40 && Math.abs(d[i + 1] - 0xa1) < 40 && Math.abs(d[i + 2] - 0xff) < 40) n++;
  }
  return n;
}, id);

function watchErrors(page, label) {
  const errors = [];
  page.on('pageerror', (e) => errors.push(`${label}: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') console.log(`     (${label} console: ${m.text()})`); });
  return errors;
}

async function testLoadedServer(browser, base) {
  console.log(`# status page at ${base}/admin, watching ${SECONDS} s`);
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const errors = watchErrors(page, 'page');
  const res = await page.goto(base + '/admin');
  check(res.status() === 200, 'GET /admin answers 200', res.status());
  check(/text\/html/.test(res.headers()['content-type'] || ''), 'GET /admin is text/html',
    res.headers()['content-type']);
  const hooked = await page.waitForFunction(() => window.__dmwAdmin && window.__dmwAdmin.ticks >= 2,
    null, { timeout: 10000 }).then(() => true, () => false);
  if (!check(hooked, 'page refreshed twice within 10 s (window.__dmwAdmin.ticks >= 2)',
    JSON.stringify(await readState(page).catch((e) => String(e))))) {
    return errors;
  }
  // The load generator loads its keys first: wait for its traffic to show.
  const loaded = await page.waitForFunction(() => Number(document.getElementById('chart-http-rps').dataset.latest) > 20,
    null, { timeout: 30000 }).then(() => true, () => false);
  check(loaded, 'HTTP requests/s above 20 within 30 s (the load shows)', (await readState(page)).httpRps);

  const samples = [];
  for (let i = 0; i <= SECONDS; i++) {
    samples.push(await readState(page));
    if (i < SECONDS) await sleep(1000);
  }
  const first = samples[0], last = samples[samples.length - 1];
  console.log('     http req/s seen: ' + samples.map((s) => s.httpRps).join(', '));
  const rps = samples.map((s) => Number(s.httpRps));
  check(rps.every((v) => v > 0), 'HTTP requests/s chart non-zero at every refresh', rps.join(', '));
  check(new Set(samples.map((s) => s.httpRps)).size >= 2, 'HTTP requests/s value changes between refreshes');
  check(last.ticks - first.ticks >= SECONDS - 1, `page refreshed at least ${SECONDS - 1} times in ${SECONDS} s`,
    `${first.ticks} -> ${last.ticks}`);
  check(last.ticks >= 5, 'page counted several refreshes', last.ticks);
  check(last.httpPoints >= 4, 'window.__dmwAdmin.series["http.rps"] holds the history', last.httpPoints);
  check(Number(last.mem) > 1e6, 'memory chart shows a non-zero resident size', `${last.mem} (${last.memText})`);
  check(/iB$/.test(last.memText || ''), 'memory figure is formatted in bytes', last.memText);
  check(Number(last.l1Bytes) > 0, 'L1 bytes non-zero (the load wrote documents)', last.l1Bytes);
  const p50 = Number(last.httpP50), p99 = Number(last.httpP99);
  check(p50 > 0 && p99 >= p50 && p99 < 10, 'HTTP p50/p99 latency plausible', `p50 ${p50} s, p99 ${p99} s`);
  if (opt['expect-tcp']) {
    check(Number(last.tcpRps) > 0, 'TCP requests/s non-zero', last.tcpRps);
  }
  check(/ %$|^no data$|^–$/.test(last.cacheL1 || ''), 'cache hit ratio shows a percentage or "no data"', last.cacheL1);
  check(/ (µs|ms|s)$|^no data$|^–$/.test(last.invalP99 || ''), 'invalidation delay shows a time or "no data"', last.invalP99);
  check(/^\d+$/.test(last.poolMax || ''), 'store pool max shown', last.poolMax);
  check(last.statusClass === 'ok' && last.errors === 0, 'status line ok, no failed fetches',
    `${last.status} (errors ${last.errors}, last ${last.lastError})`);
  check(/^\d+\.\d+/.test(last.version || ''), 'version from /healthz shown', last.version);
  check(/\d+s$/.test(last.uptime || '') && last.health === 'ok', 'uptime and health from /healthz shown',
    `${last.uptime} / ${last.health}`);
  check(!last.keyFormShown, 'no key form without auth');
  check(await linePixels(page, 'http-rps') > 5, 'HTTP requests/s chart drew a line');
  if (opt.screenshot) {
    await page.screenshot({ path: opt.screenshot, fullPage: true });
    console.log(`     screenshot: ${opt.screenshot}`);
  }
  await page.close();
  return errors;
}

async function testAuth(browser, base) {
  console.log(`# admin-key form at ${base}/admin (auth on)`);
  const adminKey = process.env.ADMIN_KEY, readonlyKey = process.env.READONLY_KEY;
  if (!check(!!adminKey, 'ADMIN_KEY given for the auth test')) return [];
  const context = await browser.newContext({ viewport: { width: 1200, height: 800 } });
  const page = await context.newPage();
  const errors = watchErrors(page, 'auth page');
  const metricsRequests = [];
  const keyInUrl = [];
  page.on('request', (r) => {
    if ([adminKey, readonlyKey].some((k) => k && r.url().includes(k))) keyInUrl.push(r.url());
    if (new URL(r.url()).pathname === '/metrics') metricsRequests.push(r.headers()['x-api-key'] || null);
  });
  await page.goto(base + '/admin');
  const asked = await page.waitForSelector('#keyform.shown', { timeout: 5000 }).then(() => true, () => false);
  check(asked, 'a 401 from /metrics shows the admin-key form');
  if (!asked) { await context.close(); return errors; }
  check(/admin key/.test(await page.textContent('#keymsg')), 'the form says an admin key is needed');
  check((await readState(page)).statusClass === 'err', 'the status line shows the refusal');

  if (readonlyKey) {
    await page.fill('#keyinput', readonlyKey);
    await page.click('#keyform button');
    const said = await page.waitForFunction(() => /not an admin key/.test(document.getElementById('keymsg').textContent),
      null, { timeout: 5000 }).then(() => true, () => false);
    check(said, 'a non-admin key (403) is refused with "not an admin key"');
    check(await page.evaluate(() => sessionStorage.getItem('dmwAdminKey')) === null, 'the refused key is forgotten');
  }

  const before = metricsRequests.length;
  await page.fill('#keyinput', adminKey);
  await page.click('#keyform button');
  const ran = await page.waitForFunction(() => window.__dmwAdmin.ticks >= 2, null, { timeout: 8000 })
    .then(() => true, () => false);
  check(ran, 'with the admin key the page refreshes');
  const state = await readState(page);
  check(!state.keyFormShown, 'the form is hidden again');
  check(Number(state.mem) > 0, 'metrics shown with the key', state.mem);
  check(await page.evaluate(() => sessionStorage.getItem('dmwAdminKey')) === adminKey, 'the key is kept in sessionStorage');
  const sent = metricsRequests.slice(before);
  check(sent.length >= 2 && sent.every((h) => h === adminKey), '/metrics fetches carry X-Api-Key',
    JSON.stringify(sent.map((h) => (h ? h.slice(0, 8) + '…' : h))));
  await page.reload();
  const kept = await page.waitForFunction(() => window.__dmwAdmin.ticks >= 1, null, { timeout: 5000 })
    .then(() => true, () => false);
  check(kept && !(await readState(page)).keyFormShown, 'after a reload the stored key is used without asking');
  check(keyInUrl.length === 0 && !page.url().includes(adminKey), 'the key never appears in a URL', keyInUrl.join(' '));
  await context.close();
  return errors;
}

const proxies = [];
async function pageBase(url) {
  url = url.replace(/\/+$/, '');
  if (!opt['admin-file']) return url;
  const p = await startProxy(url, opt['admin-file']);
  proxies.push(p);
  console.log(`# serving ${opt['admin-file']} at ${p.url}/admin, forwarding the rest to ${url}`);
  return p.url;
}

let browser;
try {
  browser = await chromium.launch({ executablePath: opt.chromium, args: ['--no-sandbox'], headless: true });
  const errors = await testLoadedServer(browser, await pageBase(positionals[0]));
  if (opt['auth-url']) errors.push(...await testAuth(browser, await pageBase(opt['auth-url'])));
  check(errors.length === 0, 'no JavaScript error thrown (pageerror)', errors.join('; '));
} catch (e) {
  check(false, 'test ran to the end', e && e.stack || e);
} finally {
  if (browser) await browser.close();
  for (const p of proxies) p.close();
}
console.log(failures ? `${failures} check(s) failed` : 'all checks passed');
process.exit(failures ? 1 : 0);
