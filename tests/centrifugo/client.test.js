// The real `centrifuge` client (centrifuge-js, npm) against a server speaking Centrifugo's
// client protocol: ringcast, or Centrifugo itself. tests/centrifugo.rs starts the server and
// runs this script twice, once per server, with the same checks; it exits 0 when all pass and
// prints each check's outcome.
//
// Environment: WS_URL (ws://HOST:PORT/connection/websocket), API_URL (http://HOST:PORT/api),
// API_KEY, TOKEN_SECRET (HS256 secret of client tokens), SERVER (ringcast | centrifugo).
//
// One difference on purpose: who may publish, read history and count presence. ringcast reads
// the connection token's `caps` claim (the format of Centrifugo PRO's channel capabilities);
// open-source Centrifugo ignores `caps` and decides by channel namespace instead. The server
// configurations agree: in both, channel `news` allows subscribing, history and presence but
// not publishing from clients; channels `pub:*` allow publishing too; `private:*` is not
// allowed without a subscription token.
'use strict';

const crypto = require('crypto');
const { Centrifuge } = require('centrifuge');
const WebSocket = require('ws');

const { WS_URL, API_URL, API_KEY, TOKEN_SECRET, SERVER } = process.env;
if (!WS_URL || !API_URL || !API_KEY || !TOKEN_SECRET || !SERVER) {
  console.error('set WS_URL, API_URL, API_KEY, TOKEN_SECRET and SERVER');
  process.exit(2);
}

const b64url = (b) => Buffer.from(b).toString('base64url');

function jwt(claims, secret = TOKEN_SECRET) {
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify(claims));
  const sig = crypto.createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

const now = () => Math.floor(Date.now() / 1000);
const CAPS = [
  { channels: ['news'], allow: ['sub', 'hst', 'prs'] },
  { channels: ['pub:*'], match: 'wildcard', allow: ['sub', 'pub', 'hst', 'prs'] },
];
const token = (sub = 'alice', exp = now() + 3600) => jwt({ sub, exp, caps: CAPS });

async function api(method, body, key = API_KEY) {
  const response = await fetch(`${API_URL}/${method}`, {
    method: 'POST',
    headers: { 'X-API-Key': key, 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

function client(options = {}) {
  return new Centrifuge(WS_URL, {
    websocket: WebSocket,
    token: token(),
    minReconnectDelay: 100,
    maxReconnectDelay: 500,
    timeout: 3000,
    ...options,
  });
}

/// Resolves with the first event `name` of `emitter` (with its context), or rejects after `ms`.
function once(emitter, name, ms = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no '${name}' within ${ms} ms`)), ms);
    emitter.once(name, (ctx) => {
      clearTimeout(timer);
      resolve(ctx);
    });
  });
}

/// Collects `count` publications of `sub` (their data and offsets).
function publications(sub, count, ms = 5000) {
  const got = [];
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`${got.length} of ${count} publications within ${ms} ms`)),
      ms,
    );
    const on = (ctx) => {
      got.push({ data: ctx.data, offset: ctx.offset });
      if (got.length === count) {
        clearTimeout(timer);
        sub.removeListener('publication', on);
        resolve(got);
      }
    };
    sub.on('publication', on);
  });
}

function check(condition, what) {
  if (!condition) {
    throw new Error(what);
  }
}

const checks = [];
const test = (name, body) => checks.push({ name, body });

const run = Date.now().toString(36);
const NEWS = 'news';

test('connect with a token, subscribe, get server-API publications with increasing offsets', async () => {
  const c = client();
  const sub = c.newSubscription(NEWS);
  const subscribed = once(sub, 'subscribed');
  sub.subscribe();
  c.connect();
  const ctx = await subscribed;
  check(ctx.recoverable && ctx.positioned, `recoverable and positioned: ${JSON.stringify(ctx)}`);
  const got = publications(sub, 3);
  for (let i = 0; i < 3; i++) {
    const r = await api('publish', { channel: NEWS, data: { n: i, run } });
    check(r.status === 200 && r.body.result && r.body.result.offset > 0, `publish: ${JSON.stringify(r)}`);
  }
  const pubs = await got;
  check(pubs.map((p) => p.data.n).join() === '0,1,2', `data in order: ${JSON.stringify(pubs)}`);
  check(pubs[1].offset === pubs[0].offset + 1 && pubs[2].offset === pubs[1].offset + 1,
    `offsets increase one by one: ${JSON.stringify(pubs)}`);
  c.disconnect();
});

test('recover after a reconnect: the publications missed meanwhile, recovered: true', async () => {
  const c = client();
  const sub = c.newSubscription(NEWS);
  const first = once(sub, 'subscribed');
  sub.subscribe();
  c.connect();
  await first;
  const before = publications(sub, 1);
  await api('publish', { channel: NEWS, data: { before: 1 } });
  await before;
  c.disconnect();
  await api('publish', { channel: NEWS, data: { missed: 1 } });
  await api('publish', { channel: NEWS, data: { missed: 2 } });
  const again = once(sub, 'subscribed');
  const missed = publications(sub, 2);
  c.connect();
  const ctx = await again;
  check(ctx.wasRecovering && ctx.recovered, `recovered: ${JSON.stringify(ctx)}`);
  const pubs = await missed;
  check(pubs.map((p) => p.data.missed).join() === '1,2', `both missed, in order: ${JSON.stringify(pubs)}`);
  c.disconnect();
});

test('recover from a stored position (since): everything after it', async () => {
  const r = await api('publish', { channel: NEWS, data: { mark: run } });
  const { offset, epoch } = r.body.result;
  await api('publish', { channel: NEWS, data: { after: 1 } });
  await api('publish', { channel: NEWS, data: { after: 2 } });
  const c = client();
  const sub = c.newSubscription(NEWS, { since: { offset, epoch } });
  const subscribed = once(sub, 'subscribed');
  const got = publications(sub, 2);
  sub.subscribe();
  c.connect();
  const ctx = await subscribed;
  check(ctx.recovered, `recovered from ${offset}: ${JSON.stringify(ctx)}`);
  const pubs = await got;
  check(pubs.map((p) => p.data.after).join() === '1,2', `after the mark: ${JSON.stringify(pubs)}`);
  check(pubs[0].offset === offset + 1, `first is offset+1: ${JSON.stringify(pubs)}`);
  c.disconnect();
});

test('an unknown epoch: recovered: false, never a silent gap', async () => {
  const c = client();
  const sub = c.newSubscription(NEWS, { since: { offset: 1, epoch: 'nosuchep' } });
  const subscribed = once(sub, 'subscribed');
  sub.subscribe();
  c.connect();
  const ctx = await subscribed;
  check(ctx.wasRecovering && !ctx.recovered, `not recovered: ${JSON.stringify(ctx)}`);
  c.disconnect();
});

test('client publish without the right to: 103; with it: delivered', async () => {
  const c = client();
  c.connect();
  await once(c, 'connected');
  const refused = await c.publish(NEWS, { nope: 1 }).then(() => null, (e) => e);
  check(refused && refused.code === 103, `publish to news refused with 103: ${JSON.stringify(refused)}`);
  const chat = `pub:chat-${run}`;
  const sub = c.newSubscription(chat);
  const subscribed = once(sub, 'subscribed');
  sub.subscribe();
  await subscribed;
  const got = publications(sub, 1);
  await sub.publish({ hello: 'world' });
  const pubs = await got;
  check(pubs[0].data.hello === 'world', `the client's own publication: ${JSON.stringify(pubs)}`);
  c.disconnect();
});

test('a channel outside the token: unsubscribed with 103', async () => {
  const c = client();
  const sub = c.newSubscription('private:x');
  const unsubscribed = once(sub, 'unsubscribed');
  sub.subscribe();
  c.connect();
  const ctx = await unsubscribed;
  check(ctx.code === 103, `unsubscribed with 103: ${JSON.stringify(ctx)}`);
  c.disconnect();
});

test('a subscription token opens the one channel it names', async () => {
  const channel = 'private:y';
  const c = client();
  const sub = c.newSubscription(channel, {
    token: jwt({ sub: 'alice', channel, exp: now() + 3600 }),
  });
  const subscribed = once(sub, 'subscribed');
  sub.subscribe();
  c.connect();
  await subscribed;
  c.disconnect();
});

test('a bad token: disconnected with 3500, not retried', async () => {
  const c = client({ token: jwt({ sub: 'alice', exp: now() + 3600 }, 'not the secret') });
  const disconnected = once(c, 'disconnected');
  c.connect();
  const ctx = await disconnected;
  check(ctx.code === 3500, `disconnected 3500: ${JSON.stringify(ctx)}`);
});

test('history and presence counts through the client', async () => {
  const c = client();
  const sub = c.newSubscription(NEWS);
  const subscribed = once(sub, 'subscribed');
  sub.subscribe();
  c.connect();
  await subscribed;
  await api('publish', { channel: NEWS, data: { hist: run } });
  const h = await sub.history({ limit: 5 });
  check(h.publications.length >= 1 && h.epoch && h.offset > 0, `history: ${JSON.stringify(h)}`);
  check(h.publications[0].offset < h.publications[h.publications.length - 1].offset,
    `the oldest first: ${JSON.stringify(h.publications.map((p) => p.offset))}`);
  const newest = await sub.history({ limit: 1, reverse: true });
  check(newest.publications[0].data.hist === run && newest.publications[0].offset === h.offset,
    `reverse: the newest first: ${JSON.stringify(newest)}`);
  const stats = await c.presenceStats(NEWS);
  check(stats.numClients >= 1 && stats.numUsers >= 1, `presence stats: ${JSON.stringify(stats)}`);
  c.disconnect();
});

test('the server API with a wrong key: 401', async () => {
  const r = await api('publish', { channel: NEWS, data: {} }, 'wrong key');
  check(r.status === 401, `401: ${JSON.stringify(r)}`);
});

(async () => {
  let failed = 0;
  for (const { name, body } of checks) {
    try {
      await body();
      console.log(`ok   ${SERVER}: ${name}`);
    } catch (err) {
      failed += 1;
      console.log(`FAIL ${SERVER}: ${name}: ${err.message}`);
    }
  }
  console.log(`${SERVER}: ${checks.length - failed} of ${checks.length} passed`);
  process.exit(failed ? 1 : 0);
})();
