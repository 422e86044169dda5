// The dashboard in a real browser (ctest label `browser`): Debian's chromium, headless, driven
// by playwright-core. Starts eventbus-executor (memory backend) and a local HTTP endpoint the
// `call` tasks hit; checks that the page goes live, that its numbers move when tasks run, that
// the instances view shows this executor (ready, its calls in flight), that a dead letter appears with its reason, that the
// task detail shows a finished task's state (and follows a scheduled one until it runs), that
// a schedule created through the API is listed and deleting it from the page removes it, and
// that redriving the dead letter from the page makes it complete, and that with an API token
// the page asks for it and the new panels then read with it.
//
//   node dashboard.test.mjs --executor PATH [--screenshot PATH]
// EVENTBUS_BROWSER_MODULES names the folder holding node_modules/playwright-core
// (scripts/install-deps.sh installs it under ~/.cache/eventbus/browser).

import { spawn } from "node:child_process";
import { createServer } from "node:http";
import { createRequire } from "node:module";
import { once } from "node:events";
import assert from "node:assert/strict";
import os from "node:os";
import path from "node:path";

const args = process.argv.slice(2);
const argValue = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const executorPath = argValue("--executor");
const screenshotPath = argValue("--screenshot");
assert.ok(executorPath, "--executor PATH is required");
const modules = process.env.EVENTBUS_BROWSER_MODULES ||
                path.join(os.homedir(), ".cache/eventbus/browser");
const require = createRequire(path.join(modules, "node_modules/"));
const { chromium } = require("playwright-core");

const log = (...m) => console.log("[browser-test]", ...m);

// The endpoint `call` tasks hit: /ok answers 200; /flaky answers 503 until `healed`; /hold
// answers once releaseHeld() is called (tasks in flight meanwhile).
let healed = false;
const hits = { ok: 0, flaky: 0 };
const held = [];
const releaseHeld = () => {
  for (const res of held.splice(0)) res.end("{}");
};
const endpoint = createServer((req, res) => {
  req.resume();
  if (req.url.startsWith("/hold")) {
    res.writeHead(200, { "Content-Type": "application/json" });
    held.push(res);
    return;
  }
  const route = req.url.startsWith("/flaky") ? "flaky" : "ok";
  hits[route]++;
  if (route === "flaky" && !healed) {
    res.writeHead(503, { "Content-Type": "text/plain" });
    res.end("upstream down");
    return;
  }
  res.writeHead(200, { "Content-Type": "application/json" });
  res.end(JSON.stringify({ ok: true, route }));
});
endpoint.listen(0, "127.0.0.1");
await once(endpoint, "listening");
const endpointUrl = `http://127.0.0.1:${endpoint.address().port}`;

// A free port for an executor: bind, read, release.
async function freePort() {
  const probe = createServer();
  probe.listen(0, "127.0.0.1");
  await once(probe, "listening");
  const free = probe.address().port;
  probe.close();
  await once(probe, "close");
  return free;
}

const executors = [];
function startExecutor(executorPort, extraEnv = {}) {
  const child = spawn(executorPath, [], {
    env: Object.assign({}, process.env, {
      EVENT_STREAM_TYPE: "memory",
      EXECUTOR_HTTP_ADDR: `127.0.0.1:${executorPort}`,
      LOG_LEVEL: "warn",
      EXECUTOR_CONCURRENCY: "8",
    }, extraEnv),
    stdio: ["ignore", "inherit", "inherit"],
  });
  executors.push(child);
  return child;
}

const port = await freePort();
const base = `http://127.0.0.1:${port}`;
startExecutor(port);
let browser;
const cleanup = async () => {
  if (browser) await browser.close().catch(() => {});
  for (const child of executors) child.kill("SIGTERM");
  releaseHeld();
  endpoint.close();
};
process.on("uncaughtException", async (e) => {
  console.error(e);
  await cleanup();
  process.exit(1);
});

async function until(what, check, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      last = await check();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what} (last: ${last})`);
}

async function call(method, route, body, { at = base, token = "" } = {}) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers["Authorization"] = "Bearer " + token;
  const response = await fetch(`${at}${route}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

async function submit(task) {
  const response = await fetch(`${base}/v1/tasks`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(task),
  });
  const text = await response.text();
  assert.equal(response.status, 202, text);
  return JSON.parse(text).id;
}

try {
  await until("the executor to answer", async () => (await fetch(`${base}/healthz`)).ok);
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(`${base}/ui`);
  assert.equal(await page.title(), "eventbus dashboard");
  await page.waitForFunction(() => document.getElementById("live").textContent === "live",
                             null, { timeout: 15000 });
  log("page is live");
  assert.match(await page.textContent("#instance"), /memory/);
  assert.equal(await page.textContent("#total-succeeded"), "0");

  // Live numbers move: 20 tasks that succeed.
  for (let i = 0; i < 20; i++) {
    await submit({ type: "call", input: { url: `${endpointUrl}/ok?i=${i}`, method: "GET" } });
  }
  await page.waitForFunction(
      () => Number(document.getElementById("total-succeeded").textContent) >= 20, null,
      { timeout: 20000 });
  log("succeeded count reached 20 on the page");

  // A dead letter appears with its reason: one attempt only, against a failing endpoint.
  const flakyId = await submit({ type: "call", retry: { max_attempts: 1 },
                                 input: { url: `${endpointUrl}/flaky`, method: "GET" } });
  const row = page.locator(`#dlq-table tr[data-task="${flakyId}"]`);
  await row.waitFor({ timeout: 20000 });
  const reason = await row.locator("td.reason").textContent();
  assert.match(reason, /503/, `dead-letter reason: ${reason}`);
  log("dead letter shown with reason:", reason);
  await until("dead-lettered count on the page",
              async () => Number(await page.textContent("#total-dead-lettered")) >= 1);

  // The instances view (from the memory task store): this executor, ready, with its record's
  // age and its in-flight count out of its slots while two calls are held; on memory no other
  // instance can share the store, so no other row is listed.
  const local = page.locator("#instance-table tr.local");
  for (let i = 0; i < 2; i++) {
    await submit({ type: "call", input: { url: `${endpointUrl}/hold?i=${i}`, method: "GET" } });
  }
  await until("two calls in flight in the instances view",
              async () => (await local.locator("td.in-flight").textContent()) === "2 / 8");
  const localText = await local.textContent();
  assert.match(localText, /\(this instance\)/, localText);
  assert.equal(await local.locator("td.health").textContent(), "ready");
  assert.match(await local.locator("td.last-seen").textContent(), /^\d+s ago$/);
  assert.equal(await page.locator("#instance-table tr.remote").count(), 0);
  assert.match(await page.textContent("#instance-note"), /EXECUTOR_INSTANCE_HEARTBEAT/);
  releaseHeld();
  log("instances view:", localText.replace(/\s+/g, " "));

  // Task detail: the dead letter's task id opens its record, dead-lettered with the 503.
  await row.locator("a.task-link").click();
  await until("the dead-lettered task's detail",
              async () => (await page.textContent("#task-state")) === "dead_lettered");
  assert.equal(await page.textContent("#task-field-id"), flakyId);
  assert.equal(await page.textContent("#task-attempts"), "1");
  assert.match(await page.textContent("#task-last-error"), /503/);
  // A task due in 2 s, opened while scheduled: the panel follows it until it is final.
  const laterId = `browser-later-${Date.now()}`;
  const later = await call("POST", "/v1/tasks", { id: laterId, type: "inject", run_after: "PT2S",
                                                 input: { data: { answer: 42 } } });
  assert.equal(later.status, 202, JSON.stringify(later.body));
  await page.fill("#task-id", laterId);
  await page.click("#task-form button[type=submit]");
  await until("the scheduled task's detail",
              async () => (await page.textContent("#task-field-id")) === laterId);
  assert.match(await page.textContent("#task-state"), /^(scheduled|queued|running|succeeded)$/);
  await until("the task detail to show it succeeded, without a click",
              async () => (await page.textContent("#task-state")) === "succeeded");
  assert.match(await page.textContent("#task-result"), /42/);
  assert.notEqual(await page.textContent("#task-finished"), "-");
  log("task detail followed", laterId, "to succeeded");
  // A wait reports its progress at each run; the open detail shows the last one live.
  const waitId = `browser-wait-${Date.now()}`;
  const wait = await call("POST", "/v1/tasks", { id: waitId, type: "wait",
                                                input: { duration: "PT2S" } });
  assert.equal(wait.status, 202, JSON.stringify(wait.body));
  await page.fill("#task-id", waitId);
  await page.click("#task-form button[type=submit]");
  await until("the wait's detail to show it succeeded",
              async () => (await page.textContent("#task-field-id")) === waitId &&
                          (await page.textContent("#task-state")) === "succeeded");
  assert.equal(await page.textContent("#task-progress"), "100 %");
  log("task detail showed", waitId, "progress 100 %");

  // Schedules: created through the API, listed with cron, zone and next run; deleted from the
  // page (two clicks), gone from the page and from the API.
  const nightly = await call("POST", "/v1/schedules", {
    id: "browser-nightly", cron: "30 2 * * *", timezone: "Europe/Berlin",
    task: { type: "inject", input: { data: {} } } });
  assert.equal(nightly.status, 201, JSON.stringify(nightly.body));
  const hourly = await call("POST", "/v1/schedules", {
    id: "browser-hourly", every: "PT1H", task: { type: "inject", input: { data: {} } } });
  assert.equal(hourly.status, 201, JSON.stringify(hourly.body));
  const nightlyRow = page.locator('#schedule-table tr[data-schedule="browser-nightly"]');
  await nightlyRow.waitFor({ timeout: 10000 });
  assert.equal(await nightlyRow.locator("td.when").textContent(), "30 2 * * *");
  assert.equal(await nightlyRow.locator("td.timezone").textContent(), "Europe/Berlin");
  assert.equal(await nightlyRow.locator("td.next-run").textContent(), nightly.body.next_run_at);
  assert.equal(await nightlyRow.locator("td.last-run").textContent(), "-");
  const hourlyRow = page.locator('#schedule-table tr[data-schedule="browser-hourly"]');
  await hourlyRow.waitFor({ timeout: 10000 });
  assert.equal(await hourlyRow.locator("td.when").textContent(), "every PT1H");
  log("schedules listed");

  // Some load for the screenshot, then redrive from the page once the endpoint is back.
  for (let i = 0; i < 30; i++) {
    await submit({ type: "call", input: { url: `${endpointUrl}/ok?load=${i}`, method: "GET" } });
  }
  await page.waitForTimeout(2500);
  if (screenshotPath) {
    await page.screenshot({ path: screenshotPath, fullPage: true });
    log("screenshot:", screenshotPath);
  }
  await nightlyRow.locator("button.delete").click();
  assert.equal(await nightlyRow.locator("button.delete").textContent(), "Really delete?");
  assert.equal((await call("GET", "/v1/schedules/browser-nightly")).status, 200,
               "one click deletes nothing");
  await nightlyRow.locator("button.delete").click();
  await page.waitForFunction(
      () => !document.querySelector('#schedule-table tr[data-schedule="browser-nightly"]'), null,
      { timeout: 10000 });
  assert.equal((await call("GET", "/v1/schedules/browser-nightly")).status, 404);
  assert.equal(await hourlyRow.count(), 1, "the other schedule stays");
  assert.match(await page.textContent("#schedule-message"), /deleted schedule browser-nightly/);
  log("schedule deleted from the page");

  healed = true;
  const succeededBefore = Number(await page.textContent("#total-succeeded"));
  await row.locator("button.redrive").click();
  await page.waitForFunction((id) => !document.querySelector(`#dlq-table tr[data-task="${id}"]`),
                             flakyId, { timeout: 20000 });
  await until("the redriven task to complete", async () => {
    const text = await page.textContent("#dlq-message");
    return /redrove 1/.test(text) &&
           Number(await page.textContent("#total-succeeded")) >= succeededBefore + 1;
  });
  assert.ok(hits.flaky >= 2, `the endpoint saw the retry (${hits.flaky} calls)`);
  log("redriven from the page and completed");
  assert.deepEqual(errors, [], "no errors in the page");

  // With EXECUTOR_API_TOKEN the page asks for the token; once given, the schedules and task
  // panels read with it as the others do.
  const token = "browser-test-token";
  const securedPort = await freePort();
  const secured = `http://127.0.0.1:${securedPort}`;
  startExecutor(securedPort, { EXECUTOR_API_TOKEN: token });
  await until("the secured executor to answer", async () => (await fetch(`${secured}/healthz`)).ok);
  assert.equal((await call("GET", "/v1/schedules", undefined, { at: secured })).status, 401);
  const securedSchedule = await call("POST", "/v1/schedules", {
    id: "secured-hourly", every: "PT1H", task: { type: "inject", input: { data: {} } } },
    { at: secured, token });
  assert.equal(securedSchedule.status, 201, JSON.stringify(securedSchedule.body));
  const securedTask = await call("POST", "/v1/tasks", { id: "secured-1", type: "inject",
                                                       input: { data: { n: 1 } } },
                                 { at: secured, token });
  assert.equal(securedTask.status, 202, JSON.stringify(securedTask.body));
  const tokenPage = await browser.newPage();
  tokenPage.on("pageerror", (e) => errors.push(String(e)));
  await tokenPage.goto(`${secured}/ui#task=secured-1`);
  await tokenPage.locator("#token-form").waitFor({ state: "visible", timeout: 10000 });
  await until("the schedules panel to say it needs the token",
              async () => /token/.test(await tokenPage.textContent("#schedule-message")));
  assert.equal(await tokenPage.locator('#schedule-table tr[data-schedule]').count(), 0);
  await tokenPage.fill("#token", token);
  await tokenPage.click("#token-form button[type=submit]");
  await tokenPage.locator('#schedule-table tr[data-schedule="secured-hourly"]')
      .waitFor({ timeout: 10000 });
  assert.equal(await tokenPage.textContent("#schedule-message"), "", "the refusal is gone");
  await until("the linked task's detail with the token",
              async () => (await tokenPage.textContent("#task-state")) === "succeeded");
  await tokenPage.waitForFunction(() => document.getElementById("live").textContent === "live",
                                  null, { timeout: 15000 });
  log("token: asked for, then schedules, task detail and live updates read with it");
  assert.deepEqual(errors, [], "no errors in the pages");
  await cleanup();
  log("PASS");
  process.exit(0);
} catch (e) {
  console.error("[browser-test] FAIL:", e);
  await cleanup();
  process.exit(1);
}
