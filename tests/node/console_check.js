// Drives the web console in a real browser (Debian's chromium, through playwright-core) for
// tests/integration/test_console.py. Usage: node console_check.js SCENARIO JSON_ARGS
// Prints one JSON line: {"ok": true, ...what the scenario saw} or {"ok": false, "error": ...}.
'use strict';

const { chromium } = require('playwright-core');

const [scenario, rawArgs] = process.argv.slice(2);
const args = JSON.parse(rawArgs || '{}');
const TIMEOUT = 15000;

async function signIn(page, key) {
  await page.goto(args.url);
  await page.fill('#credential', key);
  await page.click('#login button[type=submit]');
}

async function signedIn(page, key) {
  await signIn(page, key);
  await page.waitForSelector('#top:not([hidden])', { timeout: TIMEOUT });
}

// Whatever the page ran that it should not have: script injected through data, or markup.
const injected = (page) => page.evaluate(() => ({ xss: window.__xss === undefined ? null : window.__xss,
                                                  images: document.querySelectorAll('main img').length }));

const scenarios = {
  // A wrong key is refused on the sign-in form and nothing is kept.
  async badKey(page) {
    await signIn(page, args.key);
    await page.waitForFunction(() => document.querySelector('#login-error').textContent !== '', null,
                               { timeout: TIMEOUT });
    return { error: await page.textContent('#login-error'), top_hidden: await page.isHidden('#top'),
             stored: await page.evaluate(() => sessionStorage.length) };
  },

  // An approver sees the held statement (its text exactly, inert), approves it with a reason.
  async approve(page) {
    await signedIn(page, args.key);
    const row = `#approvals tr[data-id="${args.id}"]`;
    await page.waitForSelector(row, { timeout: TIMEOUT });
    await page.waitForFunction(() => !document.querySelector('#pending-count').hidden, null, { timeout: TIMEOUT });
    const badge = await page.textContent('#pending-count');
    const listed = await page.textContent(row);
    await page.click(`${row} a`);
    await page.waitForSelector('#reason', { timeout: TIMEOUT });
    const statement = await page.evaluate(() => document.querySelector('#statement')?.textContent ?? null);
    const parameters = await page.$$eval('#parameters li', (items) => items.map((i) => i.textContent));
    await page.fill('#reason', args.reason);
    await page.click('#approve');
    await page.waitForFunction(() => /approved/.test(document.querySelector('dl.fields dd')?.textContent || ''),
                               null, { timeout: TIMEOUT });
    const fields = await page.$$eval('dl.fields', (dls) => dls[0].textContent);
    return { badge, listed, statement, parameters, fields, hash: await page.evaluate(() => location.hash),
             decide_form: await page.$$eval('#approve', (b) => b.length), ...(await injected(page)) };
  },

  // Any identity requests a grant from the Grants tab and lands on its request; a bad one is told why.
  async requestGrant(page) {
    await signedIn(page, args.key);
    await page.click('#nav-grants');
    await page.waitForSelector('#grant-form', { timeout: TIMEOUT });
    await page.fill('#grant-tables', 'Not A Table!');
    await page.fill('#grant-reason', args.reason);
    await page.click('#grant-form button[type=submit]');
    await page.waitForFunction(() => document.querySelector('#grant-error').textContent !== '', null,
                               { timeout: TIMEOUT });
    const refused = await page.textContent('#grant-error');
    await page.fill('#grant-tables', args.tables);
    await page.fill('#grant-duration', '30m');
    await page.click('#grant-form button[type=submit]');
    await page.waitForFunction(() => /^#\/approvals\/[0-9a-f]{16}$/.test(location.hash), null, { timeout: TIMEOUT });
    await page.waitForSelector('dl.fields', { timeout: TIMEOUT });
    return { refused, id: (await page.evaluate(() => location.hash)).split('/')[2],
             title: await page.textContent('h1'), text: await page.textContent('main') };
  },

  // The Grants tab lists what is active.
  async grants(page) {
    await signedIn(page, args.key);
    await page.click('#nav-grants');
    await page.waitForSelector(`#grants a[href="#/approvals/${args.id}"]`, { timeout: TIMEOUT });
    return { row: await page.$eval(`#grants a[href="#/approvals/${args.id}"]`, (a) => a.closest('tr').textContent) };
  },

  // What an approver sees of a request: hidden characters as marks, values as tokens or text.
  async inspect(page) {
    await signedIn(page, args.key);
    await page.goto(`${args.url}#/approvals/${args.id}`);
    await page.waitForSelector('#statement', { timeout: TIMEOUT });
    return {
      marks: await page.$$eval('#statement .hidden-char', (m) => m.map((x) => x.textContent)),
      warning: await page.$$eval('#hidden-warning', (w) => w.map((x) => x.textContent).join('')),
      parameters: await page.$$eval('#parameters li > span', (spans) => spans.map((x) => [x.className, x.textContent])),
    };
  },

  // A denial needs a reason: the console says so, then denies with one.
  async deny(page) {
    await signedIn(page, args.key);
    await page.goto(`${args.url}#/approvals/${args.id}`);
    await page.waitForSelector('#deny', { timeout: TIMEOUT });
    await page.click('#deny');
    const empty = await page.textContent('#decide-error');
    await page.fill('#reason', args.reason);
    await page.click('#deny');
    await page.waitForFunction(() => /denied/.test(document.querySelector('dl.fields dd')?.textContent || ''),
                               null, { timeout: TIMEOUT });
    return { empty, fields: await page.$$eval('dl.fields', (dls) => dls[0].textContent) };
  },

  // The requester, even one in the approver groups, is told another approver decides.
  async ownRequest(page) {
    await signedIn(page, args.key);
    await page.goto(`${args.url}#/approvals/${args.id}`);
    await page.waitForSelector('#cannot-decide', { timeout: TIMEOUT });
    return { note: await page.textContent('#cannot-decide'), buttons: await page.$$eval('#approve, #deny', (b) => b.length) };
  },

  // An auditor finds the session, its statements as recorded, and its transcript.
  async sessions(page) {
    await signedIn(page, args.key);
    const nav = await page.isVisible('#nav-sessions');
    await page.click('#nav-sessions');
    await page.fill('#filter-user', args.user);
    await page.click('#session-filter button[type=submit]');
    const link = `#sessions a[href="#/sessions/${args.session}"]`;
    await page.waitForSelector(link, { timeout: TIMEOUT });
    const listed = await page.$eval(link, (a) => a.closest('tr').textContent);
    await page.click(link);
    await page.waitForSelector('.statement', { timeout: TIMEOUT });
    const statements = await page.$$eval('.statement', (cards) => cards.map((c) => ({
      sql: c.querySelector('pre.sql').textContent, text: c.textContent,
      cells: [...c.querySelectorAll('table.result td')].map((td) => td.textContent) })));
    await page.click('#show-transcript');
    await page.waitForSelector('#transcript pre', { timeout: TIMEOUT });
    const transcript = await page.textContent('#transcript pre');
    const fields = await page.$$eval('dl.fields', (dls) => dls[0].textContent);
    return { nav, listed, statements, transcript, fields, ...(await injected(page)) };
  },

  // Someone outside admin.auditors has no Sessions link, and the API's refusal is shown.
  async notAuditor(page) {
    await signedIn(page, args.key);
    const nav = await page.isVisible('#nav-sessions');
    await page.goto(`${args.url}#/sessions`);
    await page.waitForSelector('#banner:not([hidden])', { timeout: TIMEOUT });
    return { nav, banner: await page.textContent('#banner') };
  },

  // Signing out forgets the credential: a reload asks for it again.
  async signOut(page) {
    await signedIn(page, args.key);
    const who = await page.textContent('#whoami');
    await page.reload();
    await page.waitForSelector('#top:not([hidden])', { timeout: TIMEOUT });
    const keptOnReload = await page.evaluate(() => sessionStorage.length);
    await page.click('#sign-out');
    await page.waitForSelector('#login', { timeout: TIMEOUT });
    const stored = await page.evaluate(() => sessionStorage.length);
    await page.reload();
    await page.waitForSelector('#login', { timeout: TIMEOUT });
    return { who, keptOnReload, stored, top_hidden: await page.isHidden('#top') };
  },

  // A reload while the gateway does not answer keeps the credential and offers a retry.
  async unreachable(page) {
    await signedIn(page, args.key);
    await page.route('**/api/whoami', (route) => route.abort('connectionrefused'));
    await page.reload();
    await page.waitForSelector('#retry', { timeout: TIMEOUT });
    const banner = await page.textContent('#banner');
    const kept = await page.evaluate(() => sessionStorage.length);
    await page.unroute('**/api/whoami');
    await page.click('#retry');
    await page.waitForSelector('#top:not([hidden])', { timeout: TIMEOUT });
    return { banner, kept, who: await page.textContent('#whoami') };
  },

  // The page's Content-Security-Policy refuses inline script, even inserted by the page itself.
  async csp(page) {
    await page.goto(args.url);
    await page.waitForSelector('#login', { timeout: TIMEOUT });
    const tried = await page.evaluate(() => {
      const attempt = (f) => {
        try {
          f();
          return 'assigned';
        } catch (e) {
          return 'refused: ' + e.name;
        }
      };
      const s = document.createElement('script');
      const scriptText = attempt(() => { s.textContent = 'window.__xss = "inline ran"'; });
      s.append(document.createTextNode('window.__xss = "inline text node ran"'));
      document.body.append(s);
      const d = document.createElement('div');
      document.body.append(d);
      const innerHTML = attempt(() => { d.innerHTML = '<img src="x" onerror="window.__xss = \'handler ran\'">'; });
      const img = document.createElement('img');
      const handler = attempt(() => img.setAttribute('onerror', 'window.__xss = "attribute handler ran"'));
      img.src = 'x';
      document.body.append(img);
      return { scriptText, innerHTML, handler };
    });
    await page.waitForTimeout(500);
    return { ...tried, xss: await page.evaluate(() => window.__xss === undefined ? null : window.__xss) };
  },
};

(async () => {
  const run = scenarios[scenario];
  if (!run) throw new Error(`unknown scenario ${scenario}`);
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
                                          args: ['--no-sandbox', '--disable-dev-shm-usage'] });
  const errors = [], consoleErrors = []; // script errors and dialogs fail a test; console lines are told
  try {
    const page = await browser.newPage();
    page.on('pageerror', (e) => errors.push(String(e)));
    page.on('dialog', (d) => { errors.push('dialog: ' + d.message()); d.dismiss(); });
    page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
    let result;
    try {
      result = await run(page);
    } catch (e) {
      const main = await page.evaluate(() => document.body.innerText).catch(() => '');
      throw new Error(`${e.message}\n--- page text ---\n${main.slice(0, 3000)}`);
    }
    console.log(JSON.stringify({ ok: true, errors, console: consoleErrors, ...result }));
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.log(JSON.stringify({ ok: false, error: String(e.stack || e) }));
  process.exitCode = 1;
});
