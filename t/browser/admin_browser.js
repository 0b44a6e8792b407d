// Drives the relay admin in headless Chromium the way an admin would:
// log in with Basic auth, create a key through the form, read the key shown
// once, edit its concurrency limit, watch the live "current / limit" column
// while the key relays a request; search sixty keys and page through them;
// release a key's slots and regenerate it from its edit page; check that the
// list fits a 1280-pixel window; and save screenshots of each.
//
// Environment: BASE_URL, ADMIN_USER, ADMIN_PASSWORD, SHOTS (a folder for the
// .png files: admin-list, admin-search, admin-edit, admin-release,
// admin-regenerate).
'use strict';

const { chromium, request } = require('playwright-core');

const base = process.env.BASE_URL;
const user = process.env.ADMIN_USER;
const password = process.env.ADMIN_PASSWORD;
const shots = process.env.SHOTS;
const shot = (name) => `${shots}/${name}.png`;

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
    // the overview and the list as they are with the request in flight
    await page.reload();
    // the overview counts every key: other keys may have requests in flight too
    await page.waitForFunction(() => Number(document.getElementById('ov-in-flight').textContent) >= 1);
    await page.screenshot({ path: shot('admin-list'), fullPage: true });
    const res = await relayed;
    check(res.status === 200, 'the key relayed the request (200)');

    await searchAndPages(page, ctx);
    await releaseAndRegenerate(page, key);
    check(errors.length === 0, `no script errors in the page${errors.length ? ': ' + errors.join('; ') : ''}`);
    await ctx.close();
  } finally {
    await browser.close();
  }
}

// Sixty more keys, one with a long unbroken name and a long description: the
// search finds them, 25 a page, and the list still fits the window.
async function searchAndPages(page, ctx) {
  const tag = `pageprobe${Date.now() % 100000}`;
  const made = [];
  for (let i = 1; i <= 60; i += 1) {
    const long = i === 60;
    const res = await ctx.request.post(`${base}/relay-admin/api/keys`, {
      data: {
        name: long ? `${tag}-${'x'.repeat(84)}` : `${tag} ${String(i).padStart(2, '0')}`,
        description: long ? 'a long description that has to wrap inside its cell instead of '
          + 'widening the table beyond the window, '.repeat(3) : `probe number ${i}`,
        concurrencyLimit: i % 5,
        tokenLimit: i % 3 ? 100000 : 0,
      },
    });
    made.push((await res.json()).data.id);
  }
  await page.goto(`${base}/relay-admin/`);
  await page.fill('#search', tag.toUpperCase());
  await page.selectOption('#perPage', '25');
  await page.selectOption('#sort', 'name');
  await page.selectOption('#order', 'asc');
  await Promise.all([page.waitForLoadState('load'), page.click('form.list-controls button[type=submit]')]);
  const summary = (await page.textContent('#summary')).trim();
  check(summary === `60 keys match \u201c${tag.toUpperCase()}\u201d. Keys 1\u201325 of 60`,
    `the search finds the 60 keys, any case: "${summary}"`);
  const names = async () => page.$$eval('#keys tbody tr .key-name', (els) => els.map((e) => e.textContent));
  let shown = await names();
  check(shown.length === 25 && shown[0] === `${tag} 01` && shown[24] === `${tag} 25`,
    `page 1 holds 25 keys in name order (${shown[0]} .. ${shown[shown.length - 1]})`);
  const fits = await page.evaluate(() => {
    const wrap = document.querySelector('.table-wrap');
    return document.documentElement.scrollWidth <= window.innerWidth && wrap.scrollWidth <= wrap.clientWidth;
  });
  check(fits, 'the list fits a 1280-pixel window without a horizontal scrollbar, long names included');
  await Promise.all([page.waitForLoadState('load'), page.click('.pager a.next')]);
  shown = await names();
  check(shown.length === 25 && shown[0] === `${tag} 26` && (await page.textContent('.pager .where')) === 'Page 2 of 3',
    `Next shows page 2 of 3 (${shown[0]} ..)`);
  await page.screenshot({ path: shot('admin-search'), fullPage: false });
  await Promise.all([page.waitForLoadState('load'), page.click('.pager a.last')]);
  shown = await names();
  check(shown.length === 10 && await page.locator('.pager a.next').count() === 0,
    'the last page holds the other 10 keys and no Next link');
  await page.fill('#search', `${tag} 4`);
  await Promise.all([page.waitForLoadState('load'), page.click('form.list-controls button[type=submit]')]);
  shown = await names();
  check(shown.length === 10 && shown.every((n) => n.startsWith(`${tag} 4`)),
    `a narrower search: ${shown.length} keys`);
  for (const id of made) {
    await ctx.request.delete(`${base}/relay-admin/api/keys/${id}`);
  }
}

// The edit page of the browser's key: its live count labelled; release its
// slots while a request holds one; then regenerate it and use the new key.
async function releaseAndRegenerate(page, oldKey) {
  const held = fetch(`${base}/api/v1/messages`, {
    method: 'POST',
    headers: { 'x-api-key': oldKey, 'content-type': 'application/json',
      'anthropic-version': '2023-06-01', 'x-mock-hold-ms': '6000' },
    body: JSON.stringify({ model: 'claude-sonnet-4-20250514', max_tokens: 16, messages: [] }),
  });
  await page.goto(`${base}/relay-admin/?search=browser%20team`);
  await Promise.all([page.waitForLoadState('load'),
    page.locator('tr', { hasText: 'browser team' }).locator('a', { hasText: 'Edit' }).click()]);
  let inflight = '';
  for (let i = 0; i < 50 && inflight !== '1 / 2'; i += 1) {
    if (i) await page.reload();
    inflight = (await page.textContent('#inflight-now')).trim();
  }
  const label = await page.evaluate(() => document.getElementById('inflight-now').closest('.field')
    .querySelector('label').textContent);
  check(inflight === '1 / 2' && label === 'In flight now (current / limit)',
    `the edit page labels the live count: "${label}: ${inflight}"`);
  await page.screenshot({ path: shot('admin-edit'), fullPage: true });
  await Promise.all([page.waitForLoadState('load'), page.click('#release-link')]);
  const confirm = await page.textContent('p.confirm');
  check(/Requests in flight now: 1 \(limit: 2\)/.test(confirm) && /no longer count against the limit/.test(confirm),
    'the release confirmation says what happens to the request in flight');
  await page.screenshot({ path: shot('admin-release'), fullPage: false });
  await Promise.all([page.waitForURL(/\/edit\?released=1$/), page.click('form button.danger')]);
  check((await page.textContent('#released')) === 'Slots released: 1.'
    && (await page.textContent('#inflight-now')).trim() === '0 / 2',
  'after the release the key page says so and shows 0 / 2');

  await Promise.all([page.waitForLoadState('load'), page.click('#regenerate-link')]);
  check(/stops working on the very next request/.test(await page.textContent('p.confirm')),
    'the regenerate confirmation says the old key stops at once');
  await Promise.all([page.waitForLoadState('load'), page.click('form button.danger')]);
  const newKey = await page.inputValue('#new-key');
  check(/^cr_[0-9a-f]{64}$/.test(newKey) && newKey !== oldKey, 'a new key is shown once');
  // docs/ keeps this picture: the key itself is masked
  await page.screenshot({ path: shot('admin-regenerate'), fullPage: false, mask: [page.locator('#new-key')],
    maskColor: '#dde3ea' });
  const ask = (k) => fetch(`${base}/api/v1/messages`, {
    method: 'POST',
    headers: { 'x-api-key': k, 'content-type': 'application/json', 'anthropic-version': '2023-06-01' },
    body: JSON.stringify({ model: 'claude-sonnet-4-20250514', max_tokens: 16, messages: [] }),
  }).then((r) => r.status);
  const statuses = `${await ask(oldKey)} ${await ask(newKey)}`;
  check(statuses === '401 200', `the old key is refused at once, the new one relays: ${statuses}`);
  await held;
}

main().then(() => {
  console.log(`${n - failed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}, (e) => {
  console.log(`not ok - the browser run stopped: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
