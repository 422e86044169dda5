// BullMQ peer of the eventbus benchmark matrix (the executor no-op rows): adds --count jobs with
// addBulk, then runs a Worker (concurrency --concurrency) whose processor returns at once, until
// every job completed. Prints one JSON object: jobs/s of the worker phase, the CPU seconds of
// this node process in that phase and, with --redis-pid, of redis-server too.
'use strict';
const fs = require('fs');
const { Queue, Worker } = require('bullmq');

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

const host = arg('host', '127.0.0.1');
const port = Number(arg('port', '6379'));
const count = Number(arg('count', '10000'));
const size = Number(arg('size', '64'));
const concurrency = Number(arg('concurrency', '32'));
const redisPid = Number(arg('redis-pid', '0'));
const queueName = arg('queue', `bullmq-bench-${Date.now()}`);
const timeoutMs = Number(arg('timeout-ms', '120000'));

// utime + stime of a process, in seconds (fields 14 and 15 of /proc/<pid>/stat, in ticks;
// Linux's USER_HZ is 100).
function procCpuSeconds(pid) {
  if (!pid) return 0;
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

function selfCpuSeconds() {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

async function main() {
  const connection = { host, port, maxRetriesPerRequest: null };
  const queue = new Queue(queueName, { connection });
  const payload = 'x'.repeat(size);
  const addStart = process.hrtime.bigint();
  for (let sent = 0; sent < count;) {
    const n = Math.min(1000, count - sent);
    const jobs = [];
    for (let i = 0; i < n; i++) jobs.push({ name: 'noop', data: { payload, i: sent + i } });
    await queue.addBulk(jobs);
    sent += n;
  }
  const addSeconds = Number(process.hrtime.bigint() - addStart) / 1e9;

  let completed = 0;
  let failed = 0;
  const cpu0 = selfCpuSeconds();
  const redis0 = procCpuSeconds(redisPid);
  const start = process.hrtime.bigint();
  const done = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out after ${completed} of ${count} jobs`)), timeoutMs);
    const worker = new Worker(queueName, async () => ({}), { connection, concurrency, autorun: true });
    const check = () => {
      if (completed + failed >= count) {
        clearTimeout(timer);
        resolve(worker);
      }
    };
    worker.on('completed', () => { completed++; check(); });
    worker.on('failed', () => { failed++; check(); });
    worker.on('error', (err) => { clearTimeout(timer); reject(err); });
  });
  const worker = await done;
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  const cpu = selfCpuSeconds() - cpu0;
  const redisCpu = procCpuSeconds(redisPid) - redis0;
  await worker.close();
  await queue.obliterate({ force: true }).catch(() => {});
  await queue.close();
  const version = require('bullmq/package.json').version;
  console.log(JSON.stringify({
    peer: `BullMQ ${version}`, count, size, concurrency, failed,
    add_s: addSeconds, add_per_s: count / addSeconds,
    process_s: seconds, jobs_per_s: completed / seconds,
    cpu_s: cpu, cpu_s_per_1000: cpu / count * 1000,
    server_cpu_s_per_1000: redisPid ? redisCpu / count * 1000 : null,
    rss_mb: process.resourceUsage().maxRSS / 1024,
  }));
  if (failed > 0) process.exit(1);
}

main().then(() => process.exit(0), (err) => {
  console.log(JSON.stringify({ error: String(err && err.stack || err) }));
  process.exit(1);
});
