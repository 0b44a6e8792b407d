// Drives the relay admin in headless Chromium the way an admin would:
// log in with Basic auth, create a key through the form, read the key shown
// once, edit its concurrency limit, watch the live "current / limit" column
// while the key relays a request, and save a screenshot of the list.
//
// Environment: BASE_URL, ADMIN_USER, ADMIN_PASSWORD, SCREENSHOT (a .png path).
'use strict';

const { chromium, request } = require('playwright-core');

const base = process.env.BASE_URL;
const user = process.env.ADMIN_USER;
const password = process.env.ADMIN_PASSWORD;
const shot = process.env.SCREENSHOT;

let n = 0;
let failed = 0;
function check(cond, what) {
  n += 1;
  if (cond) {
    console.log(`ok ${n} - ${what}`);
  } else {
    failed += 1;
    console.log(`not ok ${n} - ${what}`);
  }
}

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    // without credentials Apache refuses
    const anon = await request.newContext();
    const refused = await anon.get(`${base}/relay-admin/`);
    check(refused.status() === 401, 'without credentials the admin answers 401');
    await anon.dispose();

    const ctx = await browser.newContext({
      httpCredentials: { username: user, password },
      viewport: { width: 1280, height: 720 },
    });
    const page = await ctx.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    page.on('console', (m) => {
      if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) errors.push(m.text());
    });
    // what the page asks for while it refreshes its live column
    const polled = [];
    page.on('request', (q) => { if (q.url().includes('/relay-admin/api/')) polled.push(q.url()); });
    // every resource the pages use must load (the browser's own favicon probe aside)
    page.on('response', (r) => {
      if (r.status() >= 400 && !r.url().endsWith('/favicon.ico')) errors.push(`${r.status()} ${r.url()}`);
    });

    // create a key through the form
    await page.goto(`${base}/relay-admin/`);
    await page.click('a[href$="/relay-admin/new"] >> nth=0');
    await page.fill('#name', 'browser team');
    await page.fill('#description', 'made in Chromium');
    await page.fill('#concurrencyLimit', '3');
    await Promise.all([page.waitForLoadState('load'), page.click('form.key-form button[type=submit]')]);
    const key = await page.inputValue('#new-key');
    check(/^cr_[0-9a-f]{64}$/.test(key), 'the new key is shown once, in full');
    check((await page.textContent('body')).includes('will not be shown again'),
      'with the warning that it will not be shown again');

    // find it in the list and edit its limit
    await page.goto(`${base}/relay-admin/`);
    const row = page.locator('tr', { hasText: 'browser team' });
    check(await row.count() === 1, 'the key is listed');
    check((await row.locator('td.inflight').textContent()).trim() === '0 / 3',
      'the list shows 0 / 3');
    await row.locator('a', { hasText: 'Edit' }).click();
    check(await page.inputValue('#name') === 'browser team', 'the edit form shows the name');
    await page.fill('#concurrencyLimit', '2');
    await Promise.all([page.waitForURL(/\/relay-admin\/$/), page.click('form.key-form button[type=submit]')]);
    const edited = page.locator('tr', { hasText: 'browser team' });
    check((await edited.locator('td.inflight').textContent()).trim() === '0 / 2',
      'after the edit the list shows the new limit 0 / 2');

    // use the key: the live column follows the request without a reload
    const relayed = fetch(`${base}/api/v1/messages`, {
      method: 'POST',
      headers: { 'x-api-key': key, 'content-type': 'application/json',
        'anthropic-version': '2023-06-01', 'x-mock-hold-ms': '8000' },
      body: JSON.stringify({ model: 'claude-sonnet-4-20250514', max_tokens: 16, messages: [] }),
    });
    let live = false;
    try {
      await page.waitForFunction(() => {
        const rows = Array.from(document.querySelectorAll('#keys tbody tr'));
        const r = rows.find((tr) => tr.textContent.includes('browser team'));
        return r && r.querySelector('td.inflight').textContent.trim() === '1 / 2';
      }, null, { timeout: 7000 });
      live = true;
    } catch (e) { /* reported below */ }
    check(live, 'the list shows 1 / 2 live while the request is in flight');
    check(polled.length > 0 && polled.every((u) => /\/relay-admin\/api\/inflight\?ids=[0-9a-f-]+/.test(u)),
      `the page polls only the light inflight endpoint${polled.length ? '' : ' (no poll seen)'}: ${polled.slice(0, 2).join(' ')}`);
    await page.screenshot({ path: shot, fullPage: true });
    const res = await relayed;
    check(res.status === 200, 'the key relayed the request (200)');
    check(errors.length === 0, `no script errors in the page${errors.length ? ': ' + errors.join('; ') : ''}`);
    await ctx.close();
  } finally {
    await browser.close();
  }
}

main().then(() => {
  console.log(`${n - failed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}, (e) => {
  console.log(`not ok - the browser run stopped: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
