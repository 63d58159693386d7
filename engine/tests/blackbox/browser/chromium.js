// Headless Chromium for the browser tests: Debian's `chromium` package (or $CHROMIUM) driven by
// puppeteer-core, which never downloads a browser of its own. A page with the shared
// timeout, collecting uncaught page errors.
"use strict";
const puppeteer = require("puppeteer-core");

const TIMEOUT_MS = 20000;

async function launch() {
  return puppeteer.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
}

// A new page of `browser`; returns [page, errors] where `errors` fills with page errors.
async function newPage(browser) {
  const page = await browser.newPage();
  page.setDefaultTimeout(TIMEOUT_MS);
  const errors = [];
  page.on("pageerror", e => errors.push(String(e)));
  return [page, errors];
}

module.exports = { launch, newPage, TIMEOUT_MS };
