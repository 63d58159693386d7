// MQTT.js in headless Chromium (Debian's `chromium` through puppeteer-core; nothing is
// downloaded) connecting to shardmq over ws:// and wss://. Used by
// engine/tests/blackbox/test_18_browser_ws.py, which trusts its test CA in the browser profile
// (an NSS database under $HOME/.pki/nssdb, made with certutil).
//
//   node websocket.js PAGE_URL WS_URL WSS_URL TOPIC
//
// PAGE_URL is a page on 127.0.0.1 that loads MQTT.js's browser bundle (served by the test:
// Chromium's local network access checks block a page of no origin from reaching loopback).
// The page connects one client over ws:// and one over wss://,
// subscribes the first, publishes from both, and waits for both messages (a marker wait,
// bounded). Prints {"received": [...], "protocols": [...]} and exits 0, or {"error": ...} and
// exits 1.
"use strict";
const { launch, newPage, TIMEOUT_MS } = require("./chromium");

const [pageUrl, wsUrl, wssUrl, topic] = process.argv.slice(2);

(async () => {
  const browser = await launch();
  try {
    const [page, errors] = await newPage(browser);
    await page.goto(pageUrl, { waitUntil: "load" });
    await page.waitForFunction(() => typeof mqtt !== "undefined");
    const result = await page.evaluate(async (wsUrl, wssUrl, topic, timeoutMs) => {
      const connect = (url, clientId) => new Promise((resolve, reject) => {
        const c = mqtt.connect(url, { clientId, protocolVersion: 5, reconnectPeriod: 0 });
        c.on("connect", () => resolve(c));
        c.on("error", e => reject(new Error(url + ": " + e.message)));
        c.on("close", () => reject(new Error(url + ": closed before CONNACK")));
      });
      const ws = await connect(wsUrl, "browser-ws-" + Math.random().toString(16).slice(2));
      const wss = await connect(wssUrl, "browser-wss-" + Math.random().toString(16).slice(2));
      const received = [];
      const both = new Promise(resolve => ws.on("message", (t, payload) => {
        received.push(payload.toString());
        if (received.length === 2) resolve();
      }));
      await new Promise((resolve, reject) =>
        ws.subscribe(topic, { qos: 1 }, e => (e ? reject(e) : resolve())));
      await new Promise((resolve, reject) =>
        wss.publish(topic, "from wss", { qos: 1 }, e => (e ? reject(e) : resolve())));
      await new Promise((resolve, reject) =>
        ws.publish(topic, "from ws", { qos: 1 }, e => (e ? reject(e) : resolve())));
      const timer = new Promise((_, reject) =>
        setTimeout(() => reject(new Error("messages: " + JSON.stringify(received))), timeoutMs));
      await Promise.race([both, timer]);
      const protocols = [ws, wss].map(c => (c.stream && c.stream.socket
        ? c.stream.socket.protocol : null));
      ws.end(true);
      wss.end(true);
      return { received: received.sort(), protocols };
    }, wsUrl, wssUrl, topic, TIMEOUT_MS);
    if (errors.length) throw new Error("page errors: " + errors.join("; "));
    console.log(JSON.stringify(result));
  } finally {
    await browser.close();
  }
})().catch(e => {
  console.log(JSON.stringify({ error: String(e && e.stack || e) }));
  process.exit(1);
});
