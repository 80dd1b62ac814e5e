#!/usr/bin/env node
// An MQTT.js client for the WebSocket listener tests.
//
//   node ws_client.js URL --username U --password P --topic T [--message M]
//                         [--ca FILE] [--protocol-version 4|5] [--timeout-ms N]
//
// Connects (ws:// or wss://), subscribes to T, publishes M to T once the SUBACK is
// in, waits for it to come back, and prints one JSON line:
//   {"connected": true, "granted": [..], "received": [{"topic", "payload"}]}
// or {"connected": false, "error": "...", "code": N} with exit status 1 (code: the
// CONNACK's return or reason code when the broker refused the connection).

'use strict';

const fs = require('fs');
const mqtt = require('mqtt');

function parseArgs(argv) {
  const out = { url: argv[0], message: 'hello over websockets', protocolVersion: 4, timeoutMs: 10000 };
  for (let i = 1; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '');
    const value = argv[i + 1];
    if (key === 'username') out.username = value;
    else if (key === 'password') out.password = value;
    else if (key === 'topic') out.topic = value;
    else if (key === 'message') out.message = value;
    else if (key === 'ca') out.ca = value;
    else if (key === 'protocol-version') out.protocolVersion = Number(value);
    else if (key === 'timeout-ms') out.timeoutMs = Number(value);
    else throw new Error(`unknown option --${key}`);
  }
  if (!out.url || !out.topic) throw new Error('usage: ws_client.js URL --topic T [...]');
  return out;
}

function finish(code, result) {
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(code);
}

let args;
try {
  args = parseArgs(process.argv.slice(2));
} catch (e) {
  finish(2, { connected: false, error: e.message });
}

const options = {
  username: args.username,
  password: args.password,
  protocolVersion: args.protocolVersion,
  clientId: `mqttjs-${process.pid}`,
  reconnectPeriod: 0,
  connectTimeout: args.timeoutMs,
};
if (args.ca) {
  options.ca = fs.readFileSync(args.ca);
  options.rejectUnauthorized = true;
}

const result = { connected: false, received: [] };
const timer = setTimeout(() => {
  result.error = 'timeout';
  finish(1, result);
}, args.timeoutMs);

const client = mqtt.connect(args.url, options);
client.on('error', (err) => {
  clearTimeout(timer);
  result.error = String(err && err.message ? err.message : err);
  // A CONNACK refusal carries its return code (3.1.1) or reason code (5).
  if (err && typeof err.code === 'number') result.code = err.code;
  finish(1, result);
});
client.on('close', () => {
  if (!result.connected) {
    clearTimeout(timer);
    result.error = result.error || 'connection closed before CONNACK';
    finish(1, result);
  }
});
client.on('connect', () => {
  result.connected = true;
  client.subscribe(args.topic, { qos: 1 }, (err, granted) => {
    if (err) {
      result.error = String(err.message || err);
      clearTimeout(timer);
      finish(1, result);
      return;
    }
    result.granted = granted.map((g) => g.qos);
    client.publish(args.topic, args.message, { qos: 1 });
  });
});
client.on('message', (topic, payload) => {
  result.received.push({ topic, payload: payload.toString() });
  clearTimeout(timer);
  client.end(false, () => finish(0, result));
});
