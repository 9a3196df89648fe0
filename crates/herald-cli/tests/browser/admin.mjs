// Drives herald's admin page in headless Chromium: the page loads and shows
// the store, a topic's schema and owner and a diff of its subject's two
// versions, an event published meanwhile appears in the live tail, and the
// Replay button replays a dead letter. Usage: node admin.mjs BASE_URL
// (the Rust test tests/admin_page.rs starts the server and prepares the
// dead letter). Exits non-zero on any failure.
import { chromium } from "playwright-core";

const base = process.argv[2];
const browser = await chromium.launch({
  executablePath: process.env.HERALD_CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.setDefaultTimeout(20_000);
  await page.goto(base + "/");
  await page.locator("#status", { hasText: "store: sqlite" }).waitFor();
  await page.locator("#topics td", { hasText: "browser.dead" }).waitFor();
  // Each topic's schema and owner; a subject's versions diffed.
  const orders = page.locator("#topics tr", { hasText: "browser.orders.placed" });
  await orders.locator("td.schema", { hasText: "browser.orders.* v2" }).waitFor();
  await orders.locator("td.owner", { hasText: "billing" }).waitFor();
  await page.locator("#subjects tr", { hasText: "browser.orders.*" }).locator("button.diff").click();
  await page.locator("#diff-title", { hasText: "browser.orders.*: version 1 → 2" }).waitFor();
  await page.locator("#schema-diff span.add", { hasText: '"note"' }).waitFor();
  if (await page.locator("#schema-diff span.del").count() !== 0) throw new Error("v2 only adds: nothing is deleted");

  // A member of a group in this server, with its health.
  await page.locator("#groups td.members", { hasText: "running: 0 in flight" }).waitFor();

  // The live tail shows an event published after it started.
  await page.fill("#tail-pattern", "browser.*");
  await page.click("#tail-start");
  await page.locator("#tail-status", { hasText: "tailing browser.*" }).waitFor();
  const published = await fetch(base + "/v1/topics/browser.live/events", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ payload: { hello: "from the browser test" } }),
  });
  if (published.status !== 201) throw new Error("publish answered " + published.status);
  await page.locator("#tail li.tail-event", { hasText: "from the browser test" }).waitFor();

  // The dead letter is listed; Replay re-publishes it and it leaves the list.
  const row = page.locator("#dead tr", { hasText: "browser.dead" });
  await row.locator("button.replay").click();
  await page.locator("#dead td.empty").waitFor();
  await page.locator("#tail li.tail-event", { hasText: "browser.dead #2" }).waitFor();

  if (errors.length) throw new Error("page errors: " + errors.join("; "));
  console.log("admin page: ok");
} finally {
  await browser.close();
}
