// Drives shardmq's web console in headless Chromium (Debian's `chromium` package through
// puppeteer-core; nothing is downloaded). Used by engine/tests/blackbox/test_20_console.py.
//
//   node console.js URL SCREENSHOT_DIR SCENARIO_JSON
//
// SCENARIO_JSON: {"token": "...", "kick": "<client id>", "retained": "<topic>",
//                 "retained_payload": "...", "filter": "<filter>", "publish_topic": "...",
//                 "publish_payload": "..."}
// Prints one JSON line per step ({"step": ..., ...}) and exits 0 when every step passed; on
// failure prints {"error": ...} and exits 1. Every wait is for something on the page (a
// marker), bounded by puppeteer's timeout, never a fixed sleep.
"use strict";
const { launch, newPage, TIMEOUT_MS } = require("./chromium");

const [url, shots, scenarioJson] = process.argv.slice(2);
const sc = JSON.parse(scenarioJson || "{}");

function step(name, extra) {
  console.log(JSON.stringify(Object.assign({ step: name }, extra || {})));
}

async function view(page, name) {
  await page.click(`nav button[data-view="${name}"]`);
  await page.waitForSelector(`section#${name}.active`, { timeout: TIMEOUT_MS });
}

// Waits until `selector`'s text contains `text`.
async function waitText(page, selector, text) {
  await page.waitForFunction(
    (sel, t) => { const el = document.querySelector(sel); return el && el.textContent.includes(t); },
    { timeout: TIMEOUT_MS }, selector, text);
}

// Clicks the button labelled `label` in the row of `table` whose text contains `needle`.
async function clickInRow(page, table, needle, label) {
  const clicked = await page.evaluate((tsel, n, l) => {
    for (const tr of document.querySelectorAll(tsel + " tr")) {
      if (!tr.textContent.includes(n)) continue;
      for (const b of tr.querySelectorAll("button")) {
        if (b.textContent === l) { b.click(); return true; }
      }
    }
    return false;
  }, table, needle, label);
  if (!clicked) throw new Error(`no ${label} button in a ${table} row with ${needle}`);
}

(async () => {
  const browser = await launch();
  try {
    const [page, errors] = await newPage(browser);
    await page.setViewport({ width: 1280, height: 820 });
    if (sc.token) {
      await page.evaluateOnNewDocument(t => sessionStorage.setItem("shardmq-token", t), sc.token);
    }
    await page.goto(url, { waitUntil: "load" });
    step("loaded", { title: await page.title() });

    // Overview: the rate chart must show traffic (a publisher runs during the test), and
    // the connections chart must have several samples.
    await page.waitForFunction(() => {
      const c = document.getElementById("chart-rate");
      return Number(c.dataset.samples || 0) >= 3 && Number(c.dataset.max || 0) > 1;
    }, { timeout: TIMEOUT_MS });
    const rateMax = await page.$eval("#chart-rate", c => Number(c.dataset.max));
    const conns = await page.$eval("#chart-conns", c => Number(c.dataset.max));
    await page.screenshot({ path: `${shots}/overview.png` });
    step("overview", { rate_max: rateMax, connections_max: conns });

    // Clients: find the client to kick, kick it.
    await view(page, "clients");
    await page.type("#clients-prefix", sc.kick);
    await page.click("#clients-form button[type=submit]");
    await waitText(page, "#clients-table", sc.kick);
    await page.screenshot({ path: `${shots}/clients.png` });
    await clickInRow(page, "#clients-table", sc.kick, "Kick");
    await waitText(page, "#clients-msg", "disconnected " + sc.kick);
    step("kicked", { client_id: sc.kick });

    // Subscriptions of a filter.
    await view(page, "subscriptions");
    await page.type("#subs-filter", sc.filter);
    await page.click("#subs-form button[type=submit]");
    await waitText(page, "#subs-table", sc.filter);
    await page.screenshot({ path: `${shots}/subscriptions.png` });
    step("subscriptions");

    // Retained: browse, read, delete.
    await view(page, "retained");
    await page.type("#ret-prefix", sc.retained_prefix || sc.retained);
    await page.click("#ret-form button[type=submit]");
    await waitText(page, "#ret-table", sc.retained);
    if (sc.hostile) {
      // A topic made of markup is shown as text: no element, no script ran.
      await waitText(page, "#ret-table", sc.hostile);
      const injected = await page.evaluate(
        () => document.querySelectorAll("main img, main script").length + (window.__xss ? 1 : 0));
      if (injected !== 0) throw new Error("markup from the API was rendered as HTML");
      step("hostile_topic_is_text");
    }
    await clickInRow(page, "#ret-table", sc.retained, "Read");
    await waitText(page, "#ret-detail", sc.retained_payload);
    await page.screenshot({ path: `${shots}/retained.png` });
    await clickInRow(page, "#ret-table", sc.retained, "Delete");
    await waitText(page, "#ret-msg", "cleared " + sc.retained);
    step("retained_deleted", { topic: sc.retained });

    // Publish.
    await view(page, "publish");
    await page.type("#pub-topic", sc.publish_topic);
    await page.type("#pub-payload", sc.publish_payload);
    await page.select("#pub-qos", "1");
    await page.click("#pub-form button[type=submit]");
    await waitText(page, "#pub-msg", "published");
    await page.screenshot({ path: `${shots}/publish.png` });
    step("published", { topic: sc.publish_topic });

    if (errors.length) throw new Error("page errors: " + errors.join("; "));
    step("done");
  } finally {
    await browser.close();
  }
})().catch(e => {
  console.log(JSON.stringify({ error: String(e && e.stack || e) }));
  process.exit(1);
});
