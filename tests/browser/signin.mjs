// Scenario 1: a browser asks for a protected page, is sent to the OpenID
// provider, signs in as alice on the provider's own pages, and lands back on
// the original URL, query included, as alice.
//
// Env: POSTERN_URL (https://localhost:PORT), OIDC_ISSUER; optional
// POSTERN_SCREENSHOTS=1.

import {
  atProviderLogin, check, echoJson, need, scenario, screenshot, signIn,
} from './lib.mjs';

const base = new URL(need('POSTERN_URL'));
const issuer = new URL(need('OIDC_ISSUER'));

await scenario('signin', {}, async ({ page }) => {
  const target = new URL('/private?x=1', base);
  const first = await page.goto(target.href);
  check(first !== null, 'the browser reached the gateway');
  const at = new URL(page.url());
  check(at.origin === issuer.origin, 'an unauthenticated browser is sent to the OpenID provider', page.url());
  check(await atProviderLogin(page), 'the provider shows its sign-in page');
  await screenshot(page, 'provider-sign-in');

  await signIn(page, 'alice', 'alice-password', (u) => u.origin === base.origin && !u.pathname.startsWith('/_postern/'));
  const back = new URL(page.url());
  check(back.pathname === '/private' && back.search === '?x=1', 'after sign-in the browser lands on the original URL with its query', page.url());
  const echo = await echoJson(page);
  check(echo.headers?.['x-postern-identity'] === 'alice', 'the upstream sees x-postern-identity: alice', JSON.stringify(echo.headers));
  check(echo.query === 'x=1', 'the upstream got the original query', JSON.stringify(echo.query));

  // The session carries on: a second protected page needs no sign-in.
  await page.goto(new URL('/private/again', base).href);
  check(new URL(page.url()).origin === base.origin, 'the session cookie keeps alice signed in');
  const again = await echoJson(page);
  check(again.headers?.['x-postern-identity'] === 'alice', 'still alice on the next request');
});
