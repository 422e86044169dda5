// The dashboard: one snapshot a second over Server-Sent Events (/v1/dashboard/events), plus
// the DLQ, task and schedule panels read on demand from the JSON API (the open task is read
// again on each snapshot until it is final). No framework, no build step: this file is
// embedded in eventbus-executor as is.
"use strict";

const state = {
  token: sessionStorage.getItem("eventbus-token") || "",
  throughput: [],  // tasks/s per snapshot
  latency: [],     // [p50, p99] ms per snapshot
  lastTotals: null,
  lastTime: null,
  dlqStream: "",
  task: "",            // the id the task panel shows
  taskFinal: true,     // whether it reached a final state (no more live reads)
  taskLoading: false,
  armedSchedule: null,  // {id, until}: the schedule whose Delete was clicked once
  schedulesFailed: false,  // the schedule message says why the last read failed
};

// The task store's final states (docs/tasks.md): nothing changes a task after these but a
// manual retry.
const FINAL_STATES = new Set(["succeeded", "failed", "dead_lettered", "cancelled"]);

const $ = (id) => document.getElementById(id);

function headers() {
  const h = { "Content-Type": "application/json" };
  if (state.token) h["Authorization"] = "Bearer " + state.token;
  return h;
}

async function api(method, path, body) {
  const response = await fetch(path, { method, headers: headers(),
                                       body: body === undefined ? undefined : JSON.stringify(body) });
  if (response.status === 401) {
    $("token-form").hidden = false;
    throw new Error("the API needs a token");
  }
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (e) { json = null; }
  if (!response.ok) throw new Error((json && json.error) || text || response.statusText);
  return json;
}

function text(element, value) { element.textContent = value; }

function cell(row, value, className) {
  const td = document.createElement("td");
  td.textContent = value === undefined || value === null ? "-" : String(value);
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function age(seconds) {
  if (seconds === undefined || seconds === null) return "-";
  if (seconds < 90) return Math.round(seconds) + "s";
  if (seconds < 5400) return Math.round(seconds / 60) + "m";
  return Math.round(seconds / 3600) + "h";
}

// A link that opens a task in the task panel.
function taskLink(id) {
  const a = document.createElement("a");
  a.className = "task-link";
  a.href = "#task=" + encodeURIComponent(id);
  a.textContent = id;
  a.dataset.task = id;
  a.addEventListener("click", (e) => {
    e.preventDefault();
    openTask(id);
  });
  return a;
}

function linkCell(row, id) {
  const td = row.insertCell();
  if (id) td.appendChild(taskLink(id)); else td.textContent = "-";
  return td;
}

// ---- the live snapshot ----

function renderStreams(streams) {
  const body = $("stream-table").tBodies[0];
  body.replaceChildren();
  for (const stream of streams || []) {
    const groups = stream.groups.length ? stream.groups : [null];
    for (const group of groups) {
      const row = body.insertRow();
      cell(row, stream.stream);
      cell(row, stream.length);
      cell(row, group ? group.group : "-");
      cell(row, group ? group.consumers.length : "-");
      cell(row, group ? (group.pending < 0 ? "?" : group.pending) : "-");
      cell(row, group ? (group.lag < 0 ? "?" : group.lag) : "-");
      cell(row, group ? age(group.oldest_pending_age_seconds) : "-");
    }
  }
}

function renderTaskStats(stats) {
  const body = $("queue-table").tBodies[0];
  if (!stats || !Array.isArray(stats.types)) return;
  body.replaceChildren();
  for (const t of stats.types) {
    const row = body.insertRow();
    row.dataset.type = t.type;
    cell(row, t.type);
    for (const s of ["scheduled", "queued", "running", "succeeded", "failed", "dead_lettered",
                     "cancelled"]) {
      cell(row, t[s] || 0, "count-" + s);
    }
    cell(row, age(t.oldest_queued_age_seconds));
  }
  if (!stats.types.length) {
    const row = body.insertRow();
    cell(row, "no tasks yet", "muted").colSpan = 9;
  }
}

function instanceRow(body, name, local) {
  const row = body.insertRow();
  row.dataset.instance = name || "";
  row.className = local ? "local" : "remote";
  cell(row, (name || "?") + (local ? " (this instance)" : ""), "name");
  return row;
}

// With a task store: every instance that reports into it (snapshot.instances, by name), this
// one live, the others as of their last heartbeat. Without one: this instance in full, and the
// other members of its consumer group by name only, as the broker lists them (the broker tells
// membership, not health; Redis even lists consumers that are gone).
function renderInstances(instance, streams, fleet, fleetError) {
  const body = $("instance-table").tBodies[0];
  body.replaceChildren();
  if (Array.isArray(fleet)) {
    for (const i of fleet) {
      const row = instanceRow(body, i.name, i.this);
      if (i.stale) {
        cell(row, "not reporting", "health bad").title = "no heartbeat for " + age(i.last_seen_age_seconds);
      } else {
        cell(row, i.ready ? "ready" : "NOT READY", i.ready ? "health" : "health bad");
      }
      cell(row, `${i.in_flight || 0} / ${i.concurrency || "?"}`, "in-flight");
      cell(row, i.running || 0);
      cell(row, i.stuck_workers || 0, i.stuck_workers ? "bad" : "");
      cell(row, i.backend);
      cell(row, i.group);
      const seen = i.last_seen_age_seconds === null || i.last_seen_age_seconds === undefined
                       ? "not in the store" : age(i.last_seen_age_seconds) + " ago";
      cell(row, seen, "last-seen" + (i.last_seen ? "" : " bad"));
    }
    const interval = fleet.length && fleet.find((i) => i.heartbeat_interval_seconds);
    text($("instance-note"), fleetError ? `Instances: ${fleetError}` :
         "Every instance on this task store reports itself" +
         (interval ? ` every ${interval.heartbeat_interval_seconds}s` : "") +
         " (EXECUTOR_INSTANCE_HEARTBEAT); this instance's figures are live. An instance " +
         "silent for 2 intervals is shown as not reporting, and after 6 it is dropped.");
    return;
  }
  const row = instanceRow(body, instance.name, true);
  cell(row, instance.ready ? "ready" : "NOT READY", instance.ready ? "health" : "health bad");
  cell(row, `${instance.in_flight || 0} / ${instance.concurrency || "?"}`, "in-flight");
  cell(row, instance.running || 0);
  cell(row, instance.stuck_workers || 0, instance.stuck_workers ? "bad" : "");
  cell(row, instance.backend);
  cell(row, instance.group);
  cell(row, "live", "last-seen");
  const request = (streams || []).find((s) => s.stream === instance.request_stream);
  const group = request && request.groups.find((g) => g.group === instance.group);
  for (const member of (group ? group.consumers : [])) {
    if (member === instance.name) continue;
    const other = instanceRow(body, member, false);
    cell(other, "not visible from here", "health muted");
    cell(other, "-");
    cell(other, "-");
    cell(other, "-");
    cell(other, instance.backend);
    cell(other, `${instance.group} (broker)`, "muted");
    cell(other, "-");
  }
  text($("instance-note"), "No task store (EXECUTOR_STORE=none): health and in-flight counts " +
       "are this instance's own. Other members of its consumer group are listed as the broker " +
       "reports them; their health is on their own /ui and /readyz.");
}

function renderSnapshot(snapshot) {
  const instance = snapshot.instance || {};
  text($("instance"), `${instance.name || "?"} · ${instance.backend || "?"} · ` +
       (instance.ready ? "ready" : "NOT READY") +
       (instance.stuck_workers ? ` · ${instance.stuck_workers} stuck workers` : ""));
  const totals = snapshot.totals || {};
  text($("total-succeeded"), totals.succeeded || 0);
  text($("total-failed"), totals.failed || 0);
  text($("total-dead-lettered"), totals.dead_lettered || 0);
  text($("total-retried"), totals.retried || 0);
  text($("in-flight"), instance.in_flight || 0);
  text($("running"), instance.running || 0);
  renderStreams(snapshot.streams);
  renderTaskStats(snapshot.tasks);
  renderInstances(instance, snapshot.streams, snapshot.instances, snapshot.instances_error);
  if (state.task && !state.taskFinal && !state.taskLoading) showTask(state.task, true);

  const now = Date.parse(snapshot.time);
  if (state.lastTotals && now > state.lastTime) {
    const done = (totals.succeeded || 0) + (totals.failed || 0) -
                 (state.lastTotals.succeeded || 0) - (state.lastTotals.failed || 0);
    state.throughput.push(done / ((now - state.lastTime) / 1000));
  }
  state.lastTotals = totals;
  state.lastTime = now;
  const latency = snapshot.latency_ms || {};
  state.latency.push([latency.p50 || 0, latency.p99 || 0]);
  for (const series of [state.throughput, state.latency]) {
    while (series.length > 120) series.shift();
  }
  drawChart($("throughput"), [state.throughput]);
  drawChart($("latency"), [state.latency.map((p) => p[0]), state.latency.map((p) => p[1])]);
}

function drawChart(canvas, seriesList) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  let max = 1;
  for (const s of seriesList) for (const v of s) max = Math.max(max, v);
  ctx.fillStyle = "#6e6e73";
  ctx.font = "11px system-ui";
  ctx.fillText(max.toFixed(max < 10 ? 1 : 0), 4, 12);
  const colors = ["#0a66c2", "#c62828"];
  seriesList.forEach((series, i) => {
    ctx.strokeStyle = colors[i % colors.length];
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    series.forEach((v, x) => {
      const px = (x / 119) * (w - 8) + 4;
      const py = h - 4 - (v / max) * (h - 20);
      if (x === 0) ctx.moveTo(px, py); else ctx.lineTo(px, py);
    });
    ctx.stroke();
  });
}

// Server-Sent Events through fetch, so the API token can travel in a header (EventSource
// cannot set one). Reconnects after a second when the stream ends.
async function follow() {
  for (;;) {
    try {
      const response = await fetch("/v1/dashboard/events", { headers: headers() });
      if (response.status === 401) {
        $("token-form").hidden = false;
        setLive(false);
        return;
      }
      if (!response.ok || !response.body) throw new Error(response.statusText);
      setLive(true);
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const message = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = message.split("\n").filter((l) => l.startsWith("data:"))
                              .map((l) => l.slice(5).trimStart()).join("\n");
          if (data) renderSnapshot(JSON.parse(data));
        }
      }
    } catch (e) {
      console.warn("live updates:", e);
    }
    setLive(false);
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

function setLive(on) {
  const badge = $("live");
  badge.className = "badge " + (on ? "on" : "off");
  text(badge, on ? "live" : "offline");
}

// ---- dead letters ----

function dlqQuery() {
  const params = new URLSearchParams();
  if (state.dlqStream) params.set("stream", state.dlqStream);
  const reason = $("dlq-reason").value.trim();
  if (reason) params.set("reason", reason);
  return params;
}

async function loadDlq() {
  try {
    const result = await api("GET", "/v1/dlq?" + dlqQuery().toString());
    state.dlqStream = result.stream;
    if (!$("dlq-stream").value) $("dlq-stream").value = result.stream;
    const body = $("dlq-table").tBodies[0];
    body.replaceChildren();
    for (const letter of result.dead_letters) {
      const row = body.insertRow();
      row.dataset.id = letter.event.id;
      row.dataset.task = letter.event.subject || "";
      if (letter.event.subject) linkCell(row, letter.event.subject);
      else cell(row, letter.event.id);
      cell(row, letter.event.time);
      cell(row, letter.event.type);
      cell(row, letter.event.headers.dlqreason, "reason");
      cell(row, letter.event.headers.dlqdeliverycount);
      const button = document.createElement("button");
      button.textContent = "Redrive";
      button.className = "redrive";
      button.addEventListener("click", () => redrive({ ids: [letter.stream_id] }));
      row.insertCell().appendChild(button);
    }
    text($("dlq-count"), `(${result.dead_letters.length})`);
  } catch (e) {
    text($("dlq-message"), String(e.message || e));
  }
}

async function redrive(selection) {
  try {
    const body = Object.assign({ stream: state.dlqStream }, selection);
    const result = await api("POST", "/v1/dlq:redrive", body);
    text($("dlq-message"), `redrove ${result.redriven}, refused ${result.refused.length}, ` +
                           `failed ${result.failed}`);
  } catch (e) {
    text($("dlq-message"), String(e.message || e));
  }
  await loadDlq();
}

// ---- task detail ----

function openTask(id) {
  $("task-id").value = id;
  history.replaceState(null, "", "#task=" + encodeURIComponent(id));
  showTask(id, false);
}

function renderTask(task) {
  text($("task-field-id"), task.id);
  text($("task-field-type"), task.type);
  text($("task-state"), task.state + (task.cancel_requested && !FINAL_STATES.has(task.state)
                                      ? " (cancel requested)" : ""));
  $("task-state").className = "state-" + task.state;
  text($("task-attempts"), task.attempts);
  for (const [id, field] of [["task-created", "created_at"], ["task-started", "started_at"],
                             ["task-finished", "finished_at"], ["task-updated", "updated_at"],
                             ["task-run-at", "run_at"], ["task-schedule", "schedule_id"]]) {
    text($(id), task[field] === null || task[field] === undefined ? "-" : task[field]);
  }
  // What the handler last reported (ReportProgress): a percentage or a JSON object.
  text($("task-progress"), task.progress === null || task.progress === undefined ? "-"
                           : typeof task.progress === "number" ? task.progress + " %"
                           : JSON.stringify(task.progress));
  text($("task-last-error"), task.last_error || "-");
  text($("task-result"), task.result === null || task.result === undefined
                           ? "-" : JSON.stringify(task.result, null, 2));
  text($("task-detail"), JSON.stringify({ history: task.history, request: task.request,
                                          progress: task.progress }, null, 2));
}

// `quiet`: a live re-read; keeps what is shown when it fails (the next snapshot tries again).
async function showTask(id, quiet) {
  if (!quiet) {
    state.task = id;
    state.taskFinal = true;
  }
  state.taskLoading = true;
  try {
    const task = await api("GET", "/v1/tasks/" + encodeURIComponent(id));
    if (id !== state.task) return;  // another task was opened meanwhile
    renderTask(task);
    state.taskFinal = FINAL_STATES.has(task.state);
    $("task-view").hidden = false;
    text($("task-message"), state.taskFinal ? "" : "updating live until the task is final");
  } catch (e) {
    if (!quiet && id === state.task) {
      $("task-view").hidden = true;
      text($("task-message"), String(e.message || e));
    }
  } finally {
    state.taskLoading = false;
  }
}

// ---- recurring schedules ----

// Two clicks: a schedule cannot be restored from the page (DELETE is final; its tasks stay).
// The armed one is kept by id, as the list is drawn again every few seconds.
function deleteButton(schedule) {
  const button = document.createElement("button");
  button.className = "delete danger";
  const armed = () => state.armedSchedule && state.armedSchedule.id === schedule.id &&
                      Date.now() < state.armedSchedule.until;
  button.textContent = armed() ? "Really delete?" : "Delete";
  button.addEventListener("click", async () => {
    if (!armed()) {
      state.armedSchedule = { id: schedule.id, until: Date.now() + 4000 };
      button.textContent = "Really delete?";
      setTimeout(() => {
        if (armed()) return;
        for (const b of $("schedule-table").querySelectorAll("button.delete")) {
          if (b.closest("tr").dataset.schedule === schedule.id) b.textContent = "Delete";
        }
      }, 4100);
      return;
    }
    state.armedSchedule = null;
    button.disabled = true;
    try {
      await api("DELETE", "/v1/schedules/" + encodeURIComponent(schedule.id));
      text($("schedule-message"), `deleted schedule ${schedule.id} (the tasks it made stay)`);
    } catch (e) {
      text($("schedule-message"), String(e.message || e));
    }
    await loadSchedules();
  });
  return button;
}

async function loadSchedules() {
  const body = $("schedule-table").tBodies[0];
  try {
    const result = await api("GET", "/v1/schedules");
    const schedules = result.schedules || [];
    body.replaceChildren();
    for (const s of schedules) {
      const row = body.insertRow();
      row.dataset.schedule = s.id;
      cell(row, s.id);
      cell(row, s.type);
      cell(row, s.cron ? s.cron : "every " + s.every, "when");
      cell(row, s.cron ? s.timezone : "-", "timezone");
      cell(row, s.next_run_at, "next-run");
      const last = cell(row, s.last_run_at, "last-run");
      if (s.last_task_id) {
        last.append(" ");
        last.appendChild(taskLink(s.last_task_id));
      }
      row.insertCell().appendChild(deleteButton(s));
    }
    if (!schedules.length) cell(body.insertRow(), "none", "muted").colSpan = 7;
    text($("schedule-count"), `(${schedules.length})`);
    if (state.schedulesFailed) text($("schedule-message"), "");  // the reason is gone
    state.schedulesFailed = false;
  } catch (e) {
    state.schedulesFailed = true;
    // Without a task store the API says so (400 naming EXECUTOR_STORE): show that.
    body.replaceChildren();
    cell(body.insertRow(), "-", "muted").colSpan = 7;
    text($("schedule-message"), String(e.message || e));
  }
}

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  state.token = $("token").value;
  sessionStorage.setItem("eventbus-token", state.token);
  $("token-form").hidden = true;
  follow();
  loadDlq();
  loadSchedules();
  if (state.task) showTask(state.task, false);
});
$("dlq-filter").addEventListener("submit", (e) => {
  e.preventDefault();
  state.dlqStream = $("dlq-stream").value.trim();
  loadDlq();
});
$("redrive-filtered").addEventListener("click", () => {
  const reason = $("dlq-reason").value.trim();
  redrive(reason ? { reason } : { all: true });
});
$("task-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const id = $("task-id").value.trim();
  if (id) openTask(id);
});

// #task=<id> opens that task: a task detail can be linked to.
if (location.hash.startsWith("#task=")) {
  openTask(decodeURIComponent(location.hash.slice("#task=".length)));
}
follow();
loadDlq();
loadSchedules();
setInterval(loadDlq, 3000);
setInterval(loadSchedules, 3000);
