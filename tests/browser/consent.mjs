// Scenario: a user-chosen opt-out, end to end in a real browser.
//
// alice asks for a docs page, signs in at the OpenID provider, sees the
// consent page (what is skipped, where, how long, the risk; an unticked
// box), consents, and lands on the page. With her postern session gone, the
// next visit needs no sign-in (the consent on this device applies). She
// revokes it on the self-service page, and the next visit asks her to sign
// in again. bob (email not verified) is told why he may not choose it, and
// a direct POST of the form is refused too.
//
// Env: POSTERN_URL, OIDC_ISSUER, BOB_CSRF (a valid CSRF token for bob, made
// by the test from the consent key, so the refusal shown is the eligibility
// check and not the token check); optional POSTERN_SCREENSHOTS=1.

import { atProviderLogin, check, echoJson, need, scenario, screenshot, signIn } from './lib.mjs';

const base = new URL(need('POSTERN_URL'));
const issuer = new URL(need('OIDC_ISSUER'));
const bobCsrf = need('BOB_CSRF');
const atGateway = (u) => u.origin === base.origin;

/** Forget postern's session (and the provider's), keep the device cookie. */
async function dropSessions(context) {
  const keep = (await context.cookies()).filter((c) => c.name === '__Host-postern_device');
  await context.clearCookies();
  await context.addCookies(keep);
}

await scenario('consent', {}, async ({ page, context }) => {
  const visited = [];
  page.on('framenavigated', (f) => { if (f === page.mainFrame()) visited.push(f.url()); });

  await page.goto(new URL('/docs/intro?v=1', base).href);
  check(new URL(page.url()).origin === issuer.origin && (await atProviderLogin(page)), 'a docs page first asks alice to sign in');
  await signIn(page, 'alice', 'alice-password', atGateway);

  let at = new URL(page.url());
  check(at.pathname === '/_postern/consent', 'after sign-in alice is offered the choice', page.url());
  const box = page.locator('#agree');
  check((await box.count()) === 1 && !(await box.isChecked()), 'the consent checkbox starts unticked');
  const text = await page.locator('body').innerText();
  for (const fact of ['What is skipped', 'Where', 'For how long', 'The risk']) {
    check(text.includes(fact), `the consent page states ${fact.toLowerCase()}`);
  }
  await screenshot(page, 'consent-page');
  // Confirming without ticking the box records nothing.
  await Promise.all([page.waitForLoadState('load'), page.click('#confirm')]);
  check(new URL(page.url()).pathname === '/_postern/consent', 'an unticked box is not consent');
  await page.check('#agree');
  await Promise.all([page.waitForLoadState('load'), page.click('#confirm')]);
  at = new URL(page.url());
  check(at.pathname === '/docs/intro' && at.search === '?v=1', 'after consenting alice lands on the page she asked for', page.url());
  let echo = await echoJson(page);
  check(echo.headers?.['x-postern-identity'] === 'alice', 'signed in as alice');

  // Her postern session ends; the consent on this device remains.
  await dropSessions(context);
  visited.length = 0;
  await page.goto(new URL('/docs/guide', base).href);
  check(visited.every((u) => new URL(u).origin === base.origin), 'the next visit needs no sign-in', visited.join(' '));
  echo = await echoJson(page);
  check(echo.headers?.['x-postern-auth'] === 'optout:remember-device-readonly', 'the user-chosen opt-out applied', JSON.stringify(echo.headers));
  check(echo.headers?.['x-postern-identity'] === 'alice', 'as alice, on her device');
  // It is read-only: anything outside its methods and paths still needs sign-in.
  const post = await page.request.post(new URL('/docs/guide', base).href, { form: { x: '1' }, maxRedirects: 0 });
  check(post.status() === 401 || post.status() === 302 || post.status() === 303, 'a POST is not covered', String(post.status()));

  // Self-service: list, revoke, and the next visit asks to sign in.
  await page.goto(new URL('/_postern/me/optouts', base).href);
  check((await page.locator('button.revoke').count()) === 1, 'the self-service page lists the opt-out with a revoke button');
  await screenshot(page, 'my-optouts');
  await Promise.all([page.waitForLoadState('load'), page.click('button.revoke')]);
  check((await page.locator('#none').count()) === 1, 'after revoking, no active opt-outs are listed');
  visited.length = 0;
  await page.goto(new URL('/docs/guide', base).href);
  check(new URL(page.url()).origin === issuer.origin && (await atProviderLogin(page)), 'after revoking, alice is asked to sign in again', page.url());
});

await scenario('consent-ineligible', {}, async ({ page }) => {
  await page.goto(new URL('/docs/intro', base).href);
  await signIn(page, 'bob', 'bob-password', atGateway);
  const at = new URL(page.url());
  // bob is not offered the choice after sign-in; asked directly, he is told why.
  check(at.pathname === '/docs/intro', 'an ineligible user is not sent to the consent page', page.url());
  await page.goto(new URL('/_postern/consent?offer=remember-device-readonly&return_to=/docs/intro', base).href);
  const text = await page.locator('body').innerText();
  check(text.includes('not available to you') && text.includes('email'), 'bob is told why he may not choose it');
  check((await page.locator('form').count()) === 0, 'and gets no form');
  // Posting the form directly, with a valid token: still refused.
  const r = await page.request.post(new URL('/_postern/consent', base).href, {
    form: { offer: 'remember-device-readonly', csrf: bobCsrf, agree: 'yes', return_to: '/docs/intro' },
    headers: { origin: base.origin },
    maxRedirects: 0,
  });
  check(r.status() === 403, 'a direct POST by an ineligible user is refused', String(r.status()));
  const cookies = await page.context().cookies();
  check(!cookies.some((c) => c.name === '__Host-postern_device'), 'and no device cookie is set');
});
