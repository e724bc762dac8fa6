// Loads the status page of a running speed-layer job in headless Chromium (Debian's package),
// waits until the charts have several points and the results tables have rows, checks the page
// did not log errors, and saves a screenshot.
//
// usage: node status_page.mjs URL SCREENSHOT.png
import { openPage } from "./launch.mjs";

const [url, out] = process.argv.slice(2);
const { browser, page, errors } = await openPage({ width: 1400, height: 1300 });
try {
  await page.goto(url);
  await page.waitForFunction(() =>
    Number(document.body.dataset.samples) >= 5
    && ["throughput", "wmlag"].every(id => Number(document.getElementById("chart-" + id).dataset.points) >= 4)
    && document.querySelectorAll("#results-binance tbody tr").length > 0
    && document.querySelectorAll("#results-polymarket_books tbody tr").length > 0
    && document.querySelectorAll("#results-polymarket_tokens tbody tr").length > 0
    && document.querySelectorAll("#partitions tbody tr").length > 0,
    null, { timeout: 60000 });
  const facts = await page.evaluate(() => ({
    samples: Number(document.body.dataset.samples),
    binanceRows: document.querySelectorAll("#results-binance tbody tr").length,
    tokenNames: Array.from(document.querySelectorAll("#results-polymarket_tokens tbody tr td:first-child")).map(td => td.textContent),
    partitions: document.querySelectorAll("#partitions tbody tr").length,
    state: document.getElementById("state").textContent,
  }));
  await page.screenshot({ path: out, fullPage: true });
  if (errors.length) throw new Error("page errors: " + errors.join("; "));
  console.log(JSON.stringify(facts));
} finally {
  await browser.close();
}
