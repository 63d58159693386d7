'use strict';
// MQTT.js scenarios for engine/tests/blackbox/test_15_mqttjs_auth.py.
//
//   node scenarios.js '{"scenario": "scram-pubsub", "port": 1234, ...}'
//
// Prints one JSON object (what MQTT.js saw) on stdout and exits 0; on an unexpected failure
// (an exception, a missing answer within the scenario's time limit) prints {"fatal": "..."}
// plus what was seen so far, and exits 1. The pytest side makes the assertions.
//
// Enhanced authentication with MQTT.js: CONNECT carries `properties.authenticationMethod` and
// `authenticationData`; every AUTH the server sends is handed to `client.handleAuth(packet,
// cb)`, whose `cb(null, authPacket)` answers an AUTH 0x18 (MQTT.js then sends it). MQTT.js has
// no public call for re-authentication, so AUTH 0x19 goes out through `client._sendPacket`.

const mqtt = require('mqtt');
const { ScramClient } = require('./scram');

const METHOD = 'SCRAM-SHA-256';
const LIMIT_MS = 20000; // waiting limit for any one answer (generous: a loaded 2-core machine)

const args = JSON.parse(process.argv[2] || '{}');
const seen = {}; // everything observed, printed also on failure

function hex(n) {
  return n === undefined || n === null ? null : `0x${n.toString(16).padStart(2, '0')}`;
}

function finish(code, result) {
  process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(code));
}

/** Resolves with the first of `events` that `emitter` emits (as {event, args}); rejects after
 * LIMIT_MS with `what` in the message. */
function waitFor(emitter, events, what) {
  return new Promise((resolve, reject) => {
    const handlers = {};
    const done = () => {
      clearTimeout(timer);
      for (const [ev, h] of Object.entries(handlers)) emitter.removeListener(ev, h);
    };
    const timer = setTimeout(() => {
      done();
      reject(new Error(`no ${what} within ${LIMIT_MS} ms`));
    }, LIMIT_MS);
    for (const ev of events) {
      handlers[ev] = (...a) => {
        done();
        resolve({ event: ev, args: a });
      };
      emitter.on(ev, handlers[ev]);
    }
  });
}

/** The packets MQTT.js received, summarised (type, reason code, the properties we check). */
function summary(packet) {
  const p = packet.properties || {};
  const out = { cmd: packet.cmd };
  if (packet.reasonCode !== undefined) out.reasonCode = packet.reasonCode;
  if (p.authenticationMethod !== undefined) out.authenticationMethod = p.authenticationMethod;
  if (p.authenticationData !== undefined) {
    out.authenticationData = Buffer.from(p.authenticationData).toString('utf8');
  }
  if (p.serverReference !== undefined) out.serverReference = p.serverReference;
  if (p.reasonString !== undefined) out.reasonString = p.reasonString;
  return out;
}

/**
 * An MQTT.js 5.0 client that authenticates with SCRAM-SHA-256 (or only names `method`).
 * Returns {client, state}; state.record collects what happened on this connection.
 */
function makeClient({ port, clientId, user, password, method = METHOD, tamper = false,
  scram = true }) {
  const state = { scram: null, record: { clientId, received: [], authHandled: [] } };
  const properties = {};
  if (method) properties.authenticationMethod = method;
  if (method && scram) {
    state.scram = new ScramClient(user, password);
    state.scram.tamperNonce = tamper;
    properties.authenticationData = state.scram.clientFirst();
  }
  const client = mqtt.connect({
    host: '127.0.0.1',
    port,
    protocol: 'mqtt',
    protocolVersion: 5,
    clientId,
    clean: true,
    keepalive: 60,
    reconnectPeriod: 0, // a refusal must stay a refusal
    connectTimeout: LIMIT_MS,
    manualConnect: true, // handleAuth is installed before anything is sent
    properties,
  });
  client.handleAuth = (packet, cb) => {
    const data = packet.properties && packet.properties.authenticationData;
    const step = { reasonCode: packet.reasonCode };
    state.record.authHandled.push(step);
    try {
      if (packet.reasonCode === 0x18) {
        const final = state.scram.clientFinal(data);
        cb(null, {
          cmd: 'auth',
          reasonCode: 0x18,
          properties: { authenticationMethod: METHOD, authenticationData: final },
        });
      } else if (packet.reasonCode === 0x00) {
        // Re-authentication succeeded: AUTH 0x00 carries server-final.
        step.serverFinalVerified = state.scram.verifyServerFinal(data);
        client.emit('reauth-done', packet);
        cb(null);
      } else {
        cb(new Error(`unexpected AUTH reason ${hex(packet.reasonCode)}`));
      }
    } catch (err) {
      step.error = err.message;
      cb(err);
    }
  };
  client.on('packetreceive', (packet) => state.record.received.push(summary(packet)));
  client.on('error', (err) => {
    state.record.errors = state.record.errors || [];
    state.record.errors.push({ code: err.code === undefined ? null : err.code,
      message: err.message });
  });
  client.on('close', () => { state.record.closed = true; });
  return { client, state };
}

/** Connects; resolves with the record once CONNACK is handled (success) or the connection is
 * refused and closed. */
async function connect(opts) {
  const { client, state } = makeClient(opts);
  const outcome = waitFor(client, ['connect', 'close'], `CONNACK for ${opts.clientId}`);
  client.connect();
  const { event, args: a } = await outcome;
  const rec = state.record;
  rec.connected = event === 'connect';
  if (rec.connected) {
    const props = a[0].properties || {};
    rec.connack = summary(a[0]);
    if (state.scram) {
      try {
        rec.serverFinalVerified = state.scram.verifyServerFinal(props.authenticationData);
      } catch (err) {
        rec.serverFinalVerified = err.message; // the test expects true
      }
    }
  } else {
    rec.connack = rec.received.find((p) => p.cmd === 'connack') || null;
  }
  return { client, state };
}

function subscribe(client, topic, qos) {
  return new Promise((resolve, reject) => {
    client.subscribe(topic, { qos }, (err, granted) => (err ? reject(err) : resolve(
      granted.map((g) => g.qos))));
  });
}

function publish(client, topic, payload, qos) {
  return new Promise((resolve, reject) => {
    client.publish(topic, payload, { qos }, (err) => (err ? reject(err) : resolve()));
  });
}

/** Resolves with the payloads received on `client` once `n` have arrived. */
function collect(client, n, what) {
  const got = [];
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(
      `${what}: ${got.length} of ${n} messages within ${LIMIT_MS} ms: ${JSON.stringify(got)}`)),
    LIMIT_MS);
    client.on('message', (topic, payload) => {
      got.push({ topic, payload: payload.toString() });
      if (got.length === n) {
        clearTimeout(timer);
        resolve(got);
      }
    });
  });
}

function end(client) {
  return new Promise((resolve) => client.end(false, {}, () => resolve()));
}

/** Re-authenticates with AUTH 0x19; resolves on AUTH 0x00 ('reauth-done') or on the
 * connection's end (DISCONNECT and/or close), with what was seen. */
async function reauthenticate(client, state, user, password) {
  state.scram = new ScramClient(user, password);
  const before = state.record.received.length;
  const handledBefore = state.record.authHandled.length;
  const outcome = waitFor(client, ['reauth-done', 'disconnect', 'close'],
    're-authentication outcome');
  client._sendPacket({
    cmd: 'auth',
    reasonCode: 0x19,
    properties: { authenticationMethod: METHOD, authenticationData: state.scram.clientFirst() },
  });
  const { event } = await outcome;
  if (event === 'disconnect' && !state.record.closed) {
    await waitFor(client, ['close'], 'close after DISCONNECT');
  }
  return {
    ended: event,
    received: state.record.received.slice(before),
    authHandled: state.record.authHandled.slice(handledBefore),
    closed: Boolean(state.record.closed),
  };
}

const scenarios = {
  /** Two SCRAM clients (ids chosen by the caller, e.g. on different shards) subscribe to one
   * topic and each publishes once at QoS 1: each must receive both messages. */
  async 'scram-pubsub'({ port, topic, clients }) {
    seen.clients = [];
    const made = [];
    for (const c of clients) {
      const { client, state } = await connect({ port, ...c });
      made.push(client);
      seen.clients.push(state.record);
      if (!state.record.connected) return seen;
    }
    seen.granted = [];
    for (const client of made) seen.granted.push(await subscribe(client, topic, 1));
    const inboxes = made.map((client, i) => collect(client, made.length, `client ${i}`));
    for (const [i, client] of made.entries()) await publish(client, topic, `from-${i}`, 1);
    seen.messages = await Promise.all(inboxes);
    for (const client of made) await end(client);
    return seen;
  },

  /** One connection attempt that the broker is expected to refuse (or accept). */
  async connect(opts) {
    const { client, state } = await connect(opts);
    Object.assign(seen, state.record);
    if (state.record.connected) await end(client);
    else if (!state.record.closed) await waitFor(client, ['close'], 'close after CONNACK');
    seen.closed = Boolean(state.record.closed);
    return seen;
  },

  /** SCRAM connect; re-authenticate with the right password (AUTH 0x00 expected), then a
   * QoS 1 round trip on the same connection; then re-authenticate as `badUser` (default: the
   * same user) with `badPassword` (DISCONNECT 0x87 and a close expected for a wrong password
   * or another user). */
  async reauth({ port, clientId, user, password, badUser = user, badPassword, topic }) {
    const { client, state } = await connect({ port, clientId, user, password });
    seen.connect = { connected: state.record.connected, connack: state.record.connack,
      serverFinalVerified: state.record.serverFinalVerified };
    if (!state.record.connected) return seen;
    seen.good = await reauthenticate(client, state, user, password);
    if (seen.good.ended !== 'reauth-done') return seen;
    seen.granted = await subscribe(client, topic, 1);
    const inbox = collect(client, 1, 'after re-authentication');
    await publish(client, topic, 'after-reauth', 1);
    seen.messages = await inbox;
    seen.bad = await reauthenticate(client, state, badUser, badPassword);
    seen.errors = state.record.errors || [];
    if (!seen.bad.closed) await end(client);
    return seen;
  },
};

async function main() {
  const run = scenarios[args.scenario];
  if (!run) throw new Error(`unknown scenario ${JSON.stringify(args.scenario)}`);
  const overall = setTimeout(() => finish(1, { fatal: 'scenario did not finish', seen }),
    3 * LIMIT_MS);
  const result = await run(args);
  clearTimeout(overall);
  finish(0, { mqttVersion: require('mqtt/package.json').version, ...result });
}

main().catch((err) => finish(1, { fatal: String((err && err.stack) || err), seen }));
