// Shared helpers for the browser scenarios: launch Debian's chromium through
// playwright-core (never a downloaded browser), sign in at the test OpenID
// provider, take screenshots, and report in a form the Rust harness reads.
//
// Output protocol (read by crates/postern/tests/browser/mod.rs): one line
// per check, `ok <what>`; on failure `FAIL <what>` and exit status 1; at the
// end `PASS <scenario>`.

import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';

export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** Env var `name`, or exit 2 naming it. */
export function need(name) {
  const v = process.env[name];
  if (!v) {
    process.stderr.write(`missing environment variable ${name}\n`);
    process.exit(2);
  }
  return v;
}

// The last check that passed and the page a scenario is on, for the
// watchdog's report.
let lastOk = '(none yet)';
let currentPage = null;

export function ok(what) {
  lastOk = what;
  process.stdout.write(`ok ${what}\n`);
}

// Watchdog: a script that has not finished within POSTERN_SCRIPT_LIMIT_MS
// (set by the Rust harness, a little under its own limit) says how far it
// got and exits 1, instead of being killed silently. Unref'd: it never
// keeps a finished script alive. Armed on import, so it also covers what a
// script does before its scenario (starting a provider, say).
const limitMs = Number(process.env.POSTERN_SCRIPT_LIMIT_MS ?? 110000);
setTimeout(() => {
  process.stdout.write(`FAIL no result within ${limitMs / 1000} s; the last check that passed: ${lastOk}\n`);
  try {
    if (currentPage) process.stdout.write(`     at ${currentPage.url()}\n`);
  } catch {}
  // playwright kills the browsers it launched when the process exits.
  process.exit(1);
}, limitMs).unref();

export class CheckFailed extends Error {}

export function check(cond, what, detail) {
  if (!cond) throw new CheckFailed(detail === undefined ? what : `${what}: ${detail}`);
  ok(what);
}

/**
 * Launch headless chromium with a fresh profile directory. `contextOptions`
 * go to `browser.newContext` (e.g. `clientCertificates`).
 * Returns { browser, context, page, close }.
 */
export async function launch(contextOptions = {}) {
  const profile = mkdtempSync(join(tmpdir(), 'postern-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    // The demo CA is not in the system store; the test trusts the servers it started.
    ignoreHTTPSErrors: true,
    viewport: { width: 1100, height: 800 },
    ...contextOptions,
  });
  context.setDefaultTimeout(15000);
  context.setDefaultNavigationTimeout(15000);
  const page = context.pages()[0] ?? (await context.newPage());
  currentPage = page;
  const close = async () => {
    await context.close().catch(() => {});
    rmSync(profile, { recursive: true, force: true });
  };
  return { context, page, close };
}

/** Is the page the test provider's sign-in form? */
export async function atProviderLogin(page) {
  return (await page.locator('form[action$="/login"] input[name="password"]').count()) > 0;
}

/**
 * On the provider's sign-in page: sign in as `login`, then accept the
 * provider's consent prompt if it shows one. Waits until the browser has
 * left the provider (`leftProvider(url)` true).
 */
export async function signIn(page, login, password, leftProvider) {
  await page.fill('input[name="login"]', login);
  await page.fill('input[name="password"]', password);
  await Promise.all([page.waitForLoadState('load'), page.click('#sign-in')]);
  const deadline = Date.now() + 15000;
  while (!leftProvider(new URL(page.url()))) {
    if (Date.now() > deadline) throw new CheckFailed(`still at ${page.url()} after signing in`);
    if ((await page.locator('#consent-continue').count()) > 0) {
      await Promise.all([page.waitForLoadState('load'), page.click('#consent-continue')]);
      continue;
    }
    if ((await page.locator('.error[role="alert"]').count()) > 0) {
      throw new CheckFailed(`the provider refused the sign-in: ${await page.locator('.error').innerText()}`);
    }
    await page.waitForTimeout(100);
  }
}

/** Save a PNG into docs/screenshots/ (repo root) when POSTERN_SCREENSHOTS=1. */
export async function screenshot(page, name) {
  if (process.env.POSTERN_SCREENSHOTS !== '1') return null;
  const dir = resolve(process.env.POSTERN_SCREENSHOT_DIR ?? new URL('../../docs/screenshots', import.meta.url).pathname);
  mkdirSync(dir, { recursive: true });
  const path = join(dir, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  ok(`screenshot ${path}`);
  return path;
}

/** Run `body(ctx)` as scenario `name`: prints PASS, or FAIL and exits 1. */
export async function scenario(name, contextOptions, body) {
  let b;
  try {
    b = await launch(contextOptions);
    await body(b);
    process.stdout.write(`PASS ${name}\n`);
  } catch (e) {
    const msg = e instanceof CheckFailed ? e.message : (e?.stack ?? String(e));
    process.stdout.write(`FAIL ${msg.split('\n').join('\n     ')}\n`);
    if (b) {
      try {
        process.stdout.write(`     at ${b.page.url()}\n`);
        const text = await b.page.locator('body').innerText({ timeout: 2000 });
        process.stdout.write(`     page: ${text.slice(0, 800).split('\n').join('\n     ')}\n`);
      } catch (e2) {
        process.stdout.write(`     (no page text: ${String(e2).split('\n')[0]})\n`);
      }
    }
    process.exitCode = 1;
  } finally {
    if (b) await b.close();
  }
}

/** The echo upstream's JSON as the browser received it. */
export async function echoJson(page) {
  const text = await page.evaluate(() => (document.querySelector('pre') ?? document.body).textContent);
  try {
    return JSON.parse(text);
  } catch {
    // A JSON viewer may have rewritten the document: ask again from the page.
    return page.evaluate(async () => (await fetch(window.location.href, { credentials: 'same-origin' })).json());
  }
}
