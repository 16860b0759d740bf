// A real OpenID provider for postern's browser tests: `oidc-provider` (a
// certified OpenID Connect implementation) with one confidential client,
// PKCE required, and a test user store whose users sign in through the
// provider's own interaction pages (login, then consent).
//
//   node provider.mjs --redirect-uri https://localhost:8443/_postern/oidc/callback \
//     [--port 0] [--host 127.0.0.1] [--client-id postern] [--client-secret S] \
//     [--post-logout-redirect-uri URL]... [--tls-cert cert.pem --tls-key key.pem] \
//     [--token-auth-method client_secret_basic|client_secret_post]
//
// Every flag may also come from the environment (OIDC_PORT, OIDC_HOST,
// OIDC_CLIENT_ID, OIDC_CLIENT_SECRET, OIDC_REDIRECT_URIS (comma-separated),
// OIDC_POST_LOGOUT_REDIRECT_URIS, OIDC_TLS_CERT, OIDC_TLS_KEY,
// OIDC_TOKEN_AUTH_METHOD). With a certificate and key it serves HTTPS,
// otherwise plain HTTP (loopback only). Prints `ready <issuer>` once
// listening; exits when its standard input closes, so it never outlives
// the test that started it.
//
// Users (login / password):
//   alice / alice-password  email verified, signs in with password + MFA
//                           (amr ["pwd","mfa"], acr urn:postern:acr:mfa)
//   bob   / bob-password    email NOT verified, password only
//                           (amr ["pwd"], acr urn:postern:acr:pwd)

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

const ACR_PWD = 'urn:postern:acr:pwd';
const ACR_MFA = 'urn:postern:acr:mfa';

export const USERS = {
  alice: {
    password: 'alice-password',
    claims: {
      name: 'Alice Example',
      preferred_username: 'alice',
      email: 'alice@example.test',
      email_verified: true,
    },
    amr: ['pwd', 'mfa'],
    acr: ACR_MFA,
  },
  bob: {
    password: 'bob-password',
    claims: {
      name: 'Bob Example',
      preferred_username: 'bob',
      email: 'bob@example.test',
      email_verified: false,
    },
    amr: ['pwd'],
    acr: ACR_PWD,
  },
};

const env = process.env;
const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: env.OIDC_PORT ?? '0' },
    host: { type: 'string', default: env.OIDC_HOST ?? '127.0.0.1' },
    'client-id': { type: 'string', default: env.OIDC_CLIENT_ID ?? 'postern' },
    'client-secret': { type: 'string', default: env.OIDC_CLIENT_SECRET },
    'redirect-uri': { type: 'string', multiple: true, default: splitList(env.OIDC_REDIRECT_URIS) },
    'post-logout-redirect-uri': {
      type: 'string', multiple: true, default: splitList(env.OIDC_POST_LOGOUT_REDIRECT_URIS),
    },
    'tls-cert': { type: 'string', default: env.OIDC_TLS_CERT },
    'tls-key': { type: 'string', default: env.OIDC_TLS_KEY },
    'token-auth-method': {
      type: 'string', default: env.OIDC_TOKEN_AUTH_METHOD ?? 'client_secret_basic',
    },
  },
});

function splitList(v) {
  return (v ?? '').split(',').map((s) => s.trim()).filter(Boolean);
}

function fail(msg) {
  process.stderr.write(`provider.mjs: ${msg}\n`);
  process.exit(2);
}

if (args['redirect-uri'].length === 0) fail('--redirect-uri (or OIDC_REDIRECT_URIS) is required');
if (!args['client-secret']) fail('--client-secret (or OIDC_CLIENT_SECRET) is required');
if (Boolean(args['tls-cert']) !== Boolean(args['tls-key'])) fail('--tls-cert and --tls-key go together');

const tls = args['tls-cert']
  ? { cert: readFileSync(args['tls-cert']), key: readFileSync(args['tls-key']) }
  : null;

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({
  '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
}[c]));

function page(title, body) {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(title)} — Test OpenID Provider</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;max-width:26rem;margin:4rem auto;padding:0 1rem;color:#222}
h1{font-size:1.3rem} label{display:block;margin:.8rem 0 .2rem} input[type=text],input[type=password]{width:100%;padding:.4rem;font-size:1rem}
button{margin-top:1rem;padding:.5rem 1.2rem;font-size:1rem} .error{color:#a00} .note{color:#666;font-size:.85rem}
</style></head><body>
<p class="note">Test OpenID Provider (oidc-provider) for postern's browser tests</p>
${body}
</body></html>`;
}

function loginPage(uid, params, error) {
  return page('Sign in', `<h1>Sign in</h1>
${error ? `<p class="error" role="alert">${esc(error)}</p>` : ''}
<form method="post" action="/interaction/${esc(uid)}/login" autocomplete="off">
<label for="login">Login</label>
<input id="login" type="text" name="login" value="${esc(params.login_hint ?? '')}" required autofocus>
<label for="password">Password</label>
<input id="password" type="password" name="password" required>
<button type="submit" id="sign-in">Sign in</button>
</form>
<p><a href="/interaction/${esc(uid)}/abort">Cancel</a></p>`);
}

function consentPage(uid, clientId, details, accountId) {
  const scopes = [...(details.missingOIDCScope ?? [])].filter((s) => s !== 'openid');
  const claims = [...(details.missingOIDCClaims ?? [])];
  const items = [
    ...scopes.map((s) => `<li>scope <code>${esc(s)}</code></li>`),
    ...claims.map((c) => `<li>claim <code>${esc(c)}</code></li>`),
  ];
  return page('Authorize', `<h1>Authorize ${esc(clientId)}</h1>
<p>Signed in as <strong>${esc(accountId)}</strong>. <code>${esc(clientId)}</code> asks for:</p>
<ul>${items.join('') || '<li>your identity (openid)</li>'}</ul>
<form method="post" action="/interaction/${esc(uid)}/confirm">
<button type="submit" id="consent-continue">Continue</button>
</form>
<p><a href="/interaction/${esc(uid)}/abort">Cancel</a></p>`);
}

const configuration = {
  clients: [{
    client_id: args['client-id'],
    client_secret: args['client-secret'],
    redirect_uris: args['redirect-uri'],
    post_logout_redirect_uris: args['post-logout-redirect-uri'],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: args['token-auth-method'],
  }],
  pkce: { required: () => true },
  acrValues: [ACR_PWD, ACR_MFA],
  claims: {
    acr: null,
    amr: null,
    auth_time: null,
    sid: null,
    // Every ID token says how the user signed in (the verified state postern reads).
    openid: ['sub', 'acr', 'amr', 'auth_time'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
  },
  // The ID token carries the scope's claims too (email_verified, …), as
  // most providers do: the relying party reads the verified state there.
  conformIdTokenClaims: false,
  cookies: { keys: [randomBytes(32).toString('hex')] },
  // A fresh signing key per run (RS256: what every relying party accepts).
  jwks: {
    keys: [{
      ...generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' }),
      alg: 'RS256',
      use: 'sig',
      kid: `test-${randomBytes(4).toString('hex')}`,
    }],
  },
  features: {
    devInteractions: { enabled: false },
    rpInitiatedLogout: { enabled: true },
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  async findAccount(ctx, sub) {
    const user = USERS[sub];
    if (!user) return undefined;
    return {
      accountId: sub,
      async claims() {
        return { sub, ...user.claims };
      },
    };
  },
  renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = page('Error', `<h1>Error</h1><pre>${esc(JSON.stringify(out, null, 2))}</pre>`);
  },
};

async function readForm(req) {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 16384) throw new Error('form too large');
  }
  return new URLSearchParams(body);
}

function send(res, status, html) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(html);
}

// The interaction pages: /interaction/<uid> (GET: the current prompt),
// /interaction/<uid>/login and /confirm (POST), /interaction/<uid>/abort.
async function interaction(provider, req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return send(res, 400, page('Error', '<p>interaction mismatch</p>'));
  const { prompt, params, session } = details;
  if (!action && req.method === 'GET') {
    if (prompt.name === 'login') return send(res, 200, loginPage(uid, params));
    if (prompt.name === 'consent') {
      return send(res, 200, consentPage(uid, params.client_id, prompt.details, session?.accountId));
    }
    return send(res, 501, page('Error', `<p>prompt ${esc(prompt.name)} not implemented</p>`));
  }
  if (action === 'login' && req.method === 'POST') {
    if (prompt.name !== 'login') return send(res, 400, page('Error', '<p>not a login prompt</p>'));
    const form = await readForm(req);
    const login = form.get('login') ?? '';
    const user = Object.hasOwn(USERS, login) ? USERS[login] : undefined;
    if (!user || form.get('password') !== user.password) {
      return send(res, 200, loginPage(uid, { ...params, login_hint: login }, 'Wrong login or password.'));
    }
    return provider.interactionFinished(req, res, {
      login: { accountId: login, amr: user.amr, acr: user.acr, remember: false },
    }, { mergeWithLastSubmission: false });
  }
  if (action === 'confirm' && req.method === 'POST') {
    if (prompt.name !== 'consent') return send(res, 400, page('Error', '<p>not a consent prompt</p>'));
    const d = prompt.details;
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
    if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
    if (d.missingResourceScopes) {
      for (const [indicator, scopes] of Object.entries(d.missingResourceScopes)) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
    }
    const grantId = await grant.save();
    return provider.interactionFinished(req, res, { consent: { grantId } }, {
      mergeWithLastSubmission: true,
    });
  }
  if (action === 'abort') {
    return provider.interactionFinished(req, res, {
      error: 'access_denied', error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
  }
  return send(res, 405, page('Error', '<p>method not allowed</p>'));
}

let handler = (_req, res) => { res.writeHead(503); res.end(); };
const server = tls
  ? https.createServer(tls, (req, res) => handler(req, res))
  : http.createServer((req, res) => handler(req, res));

server.listen(Number(args.port), args.host, () => {
  const { port } = server.address();
  const host = args.host.includes(':') ? `[${args.host}]` : args.host;
  const issuer = `${tls ? 'https' : 'http'}://${host}:${port}`;
  const provider = new Provider(issuer, configuration);
  provider.on('server_error', (_ctx, err) => process.stderr.write(`provider server_error: ${err.stack}\n`));
  const callback = provider.callback();
  handler = (req, res) => {
    const m = /^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login|confirm|abort))?$/.exec(req.url.split('?')[0]);
    if (!m) return callback(req, res);
    return interaction(provider, req, res, m[1], m[2]).catch((err) => {
      process.stderr.write(`interaction failed: ${err.stack}\n`);
      if (!res.headersSent) send(res, 400, page('Error', `<p>${esc(err.message)}</p>`));
    });
  };
  process.stdout.write(`ready ${issuer}\n`);
});

// Exit when the parent test goes away (its end of our stdin closes).
process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
process.stdin.resume();
process.on('SIGTERM', () => process.exit(0));
