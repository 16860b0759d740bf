// The admin console in a real browser: chromium presents alice's client
// certificate (playwright's `clientCertificates`), reads the console,
// revokes a grant certificate with its button; a browser without a
// certificate gets no page at all (the console's TLS requires one).
//
// Env: CONSOLE_URL (https://localhost:PORT/), ADMIN_CERT, ADMIN_KEY (PEM
// files), GRANT_SERIAL (the grant certificate to revoke); optional
// POSTERN_SCREENSHOTS=1 (saves docs/screenshots/admin-console.png).

import { check, launch, need, ok, scenario, screenshot } from './lib.mjs';

const url = new URL(need('CONSOLE_URL'));
const cert = need('ADMIN_CERT');
const key = need('ADMIN_KEY');
const serial = need('GRANT_SERIAL');

await scenario('console', {
  clientCertificates: [{ origin: url.origin, certPath: cert, keyPath: key }],
}, async ({ page }) => {
  const resp = await page.goto(url.href);
  check(resp?.status() === 200, 'alice\'s certificate opens the console', String(resp?.status()));
  check((await page.locator('h1').first().innerText()) === 'postern admin console', 'the console\'s heading');
  for (const id of ['policy', 'rules', 'uses', 'grants', 'consents', 'signals']) {
    check(await page.locator(`section#${id}`).isVisible(), `section ${id} is shown`);
  }
  const rules = await page.locator('section#rules tbody tr').count();
  check(rules === 3, 'three opt-out rules listed', String(rules));
  const uses = await page.locator('section#uses tbody tr').count();
  check(uses >= 1, 'recent opt-out uses listed', String(uses));
  const firstUse = await page.locator('section#uses tbody tr').first().innerText();
  check(firstUse.includes('demo-webhook'), 'the newest use comes first', firstUse);
  const digest = await page.locator('#digest').innerText();
  check(/^sha256:[0-9a-f]{64}$/.test(digest), 'the policy digest is shown', digest);
  const row = page.locator('section#grants tbody tr', { has: page.locator(`input[name="serial"][value="${serial}"]`) });
  check((await row.count()) === 1, 'the grant certificate is listed');
  const consents = await page.locator('section#consents tbody tr').count();
  check(consents >= 1, 'active consents listed with revoke buttons', String(consents));
  const signals = await page.locator('section#signals tbody tr').count();
  check(signals >= 1, 'risk signals that fired most listed', String(signals));
  await screenshot(page, 'admin-console');

  await Promise.all([page.waitForURL(/revoked=/), row.locator('button').click()]);
  check((await page.locator('.notice').innerText()).includes(`Certificate ${serial} revoked`), 'the console confirms the revocation');
  check((await page.locator(`section#grants input[value="${serial}"]`).count()) === 0, 'the Revoke button revoked the grant certificate');
});

// A browser without a client certificate: the handshake fails, no page.
{
  const b = await launch();
  try {
    let failed = false;
    try {
      const r = await b.page.goto(url.href);
      failed = r === null || r.status() >= 400 || !(await b.page.content()).includes('postern admin console');
    } catch {
      failed = true;
    }
    if (failed) ok('without a client certificate the browser gets no console');
    else {
      process.stdout.write('FAIL a browser without a client certificate saw the console\n');
      process.exitCode = 1;
    }
  } finally {
    await b.close();
  }
}
