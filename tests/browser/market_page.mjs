// Loads the market view (/market) of a running speed-layer job in headless Chromium, waits
// until every underlying's chart has spot prices and its Up token's probability and fair value
// and the alerts table has rows, checks the page logged no errors, and saves a screenshot.
//
// usage: node market_page.mjs URL SCREENSHOT.png
import { openPage } from "./launch.mjs";

const [url, out] = process.argv.slice(2);
const { browser, page, errors } = await openPage({ width: 1400, height: 1100 });
try {
  await page.goto(url);
  await page.waitForFunction(() => {
    const charts = Array.from(document.querySelectorAll("#underlyings canvas"));
    return Number(document.body.dataset.samples) >= 2 && charts.length >= 4
      && charts.every(c => Number(c.dataset.price) >= 5 && Number(c.dataset.prob) >= 3
                           && Number(c.dataset.fair) >= 3 && Number(c.dataset.edge) >= 3)
      && document.querySelectorAll("#alerts tbody tr").length > 0;
  }, null, { timeout: 90000 });
  const facts = await page.evaluate(() => ({
    samples: Number(document.body.dataset.samples),
    underlyings: Array.from(document.querySelectorAll("#underlyings section h2 span:first-child")).map(s => s.textContent),
    markets: Array.from(document.querySelectorAll("#underlyings .market b")).map(b => b.textContent),
    charts: Array.from(document.querySelectorAll("#underlyings canvas")).map(c => ({ ...c.dataset })),
    alerts: Array.from(document.querySelectorAll("#alerts tbody tr td.rule")).map(td => td.textContent),
  }));
  await page.screenshot({ path: out, fullPage: true });
  if (errors.length) throw new Error("page errors: " + errors.join("; "));
  console.log(JSON.stringify(facts));
} finally {
  await browser.close();
}
