/**
 * Relay-protocol peer server on Node `ws` (8.x).
 *
 * Why this exists: ringcast is compared against the servers its users run
 * today. This is the broadcast loop from the `ws` README, with one set of
 * clients per channel (the request path): every message a client sends is
 * passed to `client.send(data, { binary: isBinary })` for every *other* open
 * client on that channel. `ws` never drops for a slow receiver (its
 * `bufferedAmount` just grows), and its default maxPayload (100 MiB) already
 * exceeds the 16 MiB the relay protocol needs, so nothing is tuned.
 *
 * With `deflate`, permessage-deflate is accepted (ws's perMessageDeflate: a
 * deflate stream per connection, so each broadcast is compressed once per
 * subscriber), at level 1 and from 128 bytes, as ringcast's defaults.
 *
 * Usage: node server.js PORT [deflate]   (binds 127.0.0.1:PORT; SIGTERM/SIGINT close it)
 */
'use strict';

const { WebSocketServer, WebSocket } = require('ws');

const port = Number(process.argv[2]);
const deflate = process.argv[3] === 'deflate';
if (!Number.isInteger(port) || port <= 0 || port > 65535 || process.argv.length > 4 || (process.argv[3] !== undefined && !deflate)) {
  console.error('usage: node server.js PORT [deflate]');
  process.exit(2);
}

/** channel name (request path) -> Set of clients on it */
const channels = new Map();

const wss = new WebSocketServer({
  host: '127.0.0.1',
  port,
  perMessageDeflate: deflate ? { threshold: 128, zlibDeflateOptions: { level: 1 } } : false,
});

wss.on('connection', (ws, req) => {
  const channel = req.url;
  let members = channels.get(channel);
  if (members === undefined) {
    members = new Set();
    channels.set(channel, members);
  }
  members.add(ws);

  ws.on('message', (data, isBinary) => {
    for (const client of members) {
      if (client !== ws && client.readyState === WebSocket.OPEN) {
        client.send(data, { binary: isBinary });
      }
    }
  });

  ws.on('close', () => {
    members.delete(ws);
    if (members.size === 0 && channels.get(channel) === members) {
      channels.delete(channel);
    }
  });

  ws.on('error', (err) => console.error(`connection error: ${err.message}`));
});

wss.on('listening', () => {
  console.log(`listening on 127.0.0.1:${port}`);
});

wss.on('error', (err) => {
  console.error(`server error: ${err.message}`);
  process.exit(1);
});

function shutdown() {
  for (const client of wss.clients) client.close(1001, 'server shutting down');
  // Clients that do not answer the close handshake are cut after a grace period.
  setTimeout(() => {
    for (const client of wss.clients) client.terminate();
  }, 1000).unref();
  wss.close(() => process.exit(0));
}

process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
