// Opens a run's report in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core) and checks what a user would see: the page loads without console errors or
// page errors, every image decodes, the evaluation tables are there (and, for a synthetic run,
// the scene-score table and the per-turn curve). Writes a full-page screenshot.
//
//   CHATPAINTER_PLAYWRIGHT=<dir of playwright-core> node tests/report_browser.cjs \
//       runs/smoke-…/report/index.html runs/smoke-…/report/screenshot.png [--scenes]
//
// `cargo xtask ci` runs it on the smoke run's report (installing playwright-core from npm).

const path = require("path");
const { chromium } = require(process.env.CHATPAINTER_PLAYWRIGHT || "playwright-core");

async function main() {
  const [page_path, shot, ...flags] = process.argv.slice(2);
  if (!page_path || !shot) {
    throw new Error("usage: report_browser.cjs <index.html> <screenshot.png> [--scenes]");
  }
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  const problems = [];
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    page.on("console", (m) => {
      if (m.type() === "error") problems.push(`console error: ${m.text()}`);
    });
    page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
    page.on("requestfailed", (r) => problems.push(`request failed: ${r.url()}`));
    await page.goto("file://" + path.resolve(page_path), { waitUntil: "load" });
    const images = await page.evaluate(async () => {
      const all = Array.from(document.images);
      await Promise.all(all.map((i) => i.decode().catch(() => {})));
      return all.map((i) => ({ src: i.src.slice(0, 60), ok: i.complete && i.naturalWidth > 0 }));
    });
    if (images.length === 0) problems.push("the page has no images");
    for (const i of images.filter((i) => !i.ok)) problems.push(`image does not decode: ${i.src}…`);
    const required = ["#metrics ~ table"];
    if (flags.includes("--scenes")) required.push("#scene-scores ~ table", ".per-turn-curve svg", ".learning-curve svg");
    for (const sel of required) {
      if ((await page.locator(sel).count()) === 0) problems.push(`missing on the page: ${sel}`);
    }
    await page.screenshot({ path: shot, fullPage: true });
    console.log(`report_browser: ${images.length} images decoded, screenshot ${shot}`);
  } finally {
    await browser.close();
  }
  if (problems.length > 0) {
    console.error(problems.join("\n"));
    process.exit(1);
  }
}

main().catch((e) => {
  console.error(`report_browser: ${e.stack || e}`);
  process.exit(1);
});
