/**
 * Relay-protocol peer server on uWebSockets.js pub/sub (npm `uwebsockets`).
 *
 * Why this exists: ringcast is compared against the servers its users run
 * today, and uWebSockets.js is the fastest of them. This is its idiomatic
 * broadcast: one topic per channel (the request path), each socket subscribes
 * to its channel's topic on open, and every message it sends is published with
 * `ws.publish(topic, message, isBinary)`. `ws.publish` delivers to every
 * subscriber *except the publishing socket* (`app.publish` would echo it back),
 * which is exactly the relay protocol.
 *
 * Tuned only where the relay protocol requires (see peers/README.md):
 * - maxBackpressure: the default 64 KiB makes publish silently skip a slow
 *   subscriber; raised to 1 GiB, and closeOnBackpressureLimit set so that a
 *   subscriber past even that is closed (and logged) rather than skipped.
 * - maxPayloadLength: the default is 16 KiB; the protocol needs 16 MiB.
 * - idleTimeout: 0 (off), so a subscriber that only listens is never timed out.
 *
 * With `deflate`, permessage-deflate is accepted with uWS.SHARED_COMPRESSOR
 * (one compressor shared by all sockets, no context kept between messages).
 *
 * Usage: node server.js PORT [deflate]   (binds 127.0.0.1:PORT; SIGTERM/SIGINT close it)
 */
'use strict';

const uWS = require('uwebsockets');

const port = Number(process.argv[2]);
const deflate = process.argv[3] === 'deflate';
if (!Number.isInteger(port) || port <= 0 || port > 65535 || process.argv.length > 4 || (process.argv[3] !== undefined && !deflate)) {
  console.error('usage: node server.js PORT [deflate]');
  process.exit(2);
}

const MAX_MESSAGE = 16 * 1024 * 1024;
const MAX_BACKPRESSURE = 1024 * 1024 * 1024;

/** every open socket, so that shutdown can close them */
const sockets = new Set();
let listenSocket = null;

const app = uWS.App().ws('/*', {
  compression: deflate ? uWS.SHARED_COMPRESSOR : uWS.DISABLED,
  maxPayloadLength: MAX_MESSAGE,
  maxBackpressure: MAX_BACKPRESSURE,
  closeOnBackpressureLimit: true,
  idleTimeout: 0,

  upgrade: (res, req, context) => {
    // The request path is the channel name; keep it as the socket's topic.
    res.upgrade(
      { channel: req.getUrl() },
      req.getHeader('sec-websocket-key'),
      req.getHeader('sec-websocket-protocol'),
      req.getHeader('sec-websocket-extensions'),
      context,
    );
  },

  open: (ws) => {
    sockets.add(ws);
    ws.subscribe(ws.getUserData().channel);
  },

  message: (ws, message, isBinary) => {
    // Delivered to every other subscriber of the topic, never to `ws` itself.
    // The fourth argument asks for compression (it is off by default, even with a compressor
    // configured); it applies only to subscribers that negotiated permessage-deflate.
    ws.publish(ws.getUserData().channel, message, isBinary, deflate);
  },

  dropped: (ws) => {
    console.error(`dropped a message for a subscriber of ${ws.getUserData().channel} (backpressure limit)`);
  },

  close: (ws) => {
    sockets.delete(ws);
  },
});

app.listen('127.0.0.1', port, (token) => {
  if (!token) {
    console.error(`could not listen on 127.0.0.1:${port}`);
    process.exit(1);
  }
  listenSocket = token;
  console.log(`listening on 127.0.0.1:${port}`);
});

function shutdown() {
  if (listenSocket !== null) {
    uWS.us_listen_socket_close(listenSocket);
    listenSocket = null;
  }
  for (const ws of sockets) ws.end(1001, 'server shutting down');
  // The loop ends by itself once every socket is gone; do not wait on stragglers.
  setTimeout(() => process.exit(0), 1000);
}

process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
