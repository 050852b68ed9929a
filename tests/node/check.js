// End-to-end check of a running itc-server from Node: @grpc/grpc-js with the protos of
// proto/ loaded at run time by @grpc/proto-loader (no generated code).
//
// A coordinator connects a session and subscribes with a filter (one agent, four event
// types); an agent on its own channel starts a task and reports progress while another
// agent's task makes noise. The coordinator must see exactly the filtered events, in
// order, with the seqs the agent's calls returned; after it stops reading, resubscribing
// with afterSeq replays exactly what it missed; GetStatus shows the task as reported.
//
// Run by scripts/check-node.sh, which installs the packages and starts the server:
//
//   node tests/node/check.js PROTO_DIR 127.0.0.1:PORT
//
// Prints "node-check: N passed, 0 failed" on success; exits 1 on the first failure.
'use strict';

const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const CALL_TIMEOUT_MS = 10_000; // the deadline of every unary call
const WAIT_TIMEOUT_MS = 15_000; // the wait for one streamed event

const RUN = crypto.randomUUID().slice(0, 8);
const AGENT_ID = `node-agent-${RUN}`;
const COORDINATOR_ID = `node-coordinator-${RUN}`;

let passed = 0;

function check(condition, message) {
  assert.ok(condition, message);
  passed += 1;
}

function ok(message) {
  console.log(`ok - ${message}`);
}

function load(protoDir) {
  const files = ['agent_service', 'monitor_service', 'session_service'].map((f) =>
    path.join('itc', 'v1', `${f}.proto`),
  );
  const definition = protoLoader.loadSync(files, {
    includeDirs: [protoDir],
    keepCase: false, // camelCase fields, as in the proto3 JSON mapping
    longs: String, // uint64 seqs and versions as decimal strings
    enums: String, // enum values by name
    defaults: true,
    oneofs: true, // the name of the set member in `detail`
  });
  return grpc.loadPackageDefinition(definition).itc.v1;
}

// Promisified unary call with a deadline.
function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + CALL_TIMEOUT_MS);
    client[method](request, { deadline }, (err, response) => (err ? reject(err) : resolve(response)));
  });
}

// A Subscribe stream whose messages can be awaited one at a time, with a deadline.
class Events {
  constructor(monitor, request) {
    this.queue = [];
    this.waiters = [];
    this.ended = null;
    this.call = monitor.Subscribe(request);
    this.call.on('data', (m) => this.push(m));
    this.call.on('error', (err) => {
      this.ended = err.code === grpc.status.CANCELLED ? 'cancelled' : `error: ${err.message}`;
      this.push(null);
    });
    this.call.on('end', () => {
      this.ended = this.ended || 'end';
      this.push(null);
    });
  }

  push(message) {
    const waiter = this.waiters.shift();
    if (waiter) waiter(message);
    else this.queue.push(message);
  }

  // The next message with a seq (skipping stream-control messages, seq 0).
  async next(what) {
    for (;;) {
      const message = await this.raw(what);
      if (message.event.seq !== '0') return message.event;
    }
  }

  // The next message, whatever it is.
  raw(what) {
    if (this.queue.length > 0) return this.check(this.queue.shift(), what);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(new Error(`Subscribe: no ${what} within ${WAIT_TIMEOUT_MS} ms`));
      }, WAIT_TIMEOUT_MS);
      const waiter = (message) => {
        clearTimeout(timer);
        try {
          resolve(this.check(message, what));
        } catch (err) {
          reject(err);
        }
      };
      this.waiters.push(waiter);
    });
  }

  check(message, what) {
    if (message === null) throw new Error(`Subscribe ended (${this.ended}) before ${what}`);
    return message;
  }

  close() {
    this.call.cancel();
  }
}

async function run(protoDir, address) {
  const v1 = load(protoDir);
  const credentials = grpc.credentials.createInsecure();
  // Separate channels for the two parties (distinct channel options keep them apart).
  const agentOptions = { 'grpc.primary_user_agent': 'itc-node-check-agent' };
  const coordOptions = { 'grpc.primary_user_agent': 'itc-node-check-coordinator' };
  const agent = new v1.AgentService(address, credentials, agentOptions);
  const sessions = new v1.SessionService(address, credentials, coordOptions);
  const monitor = new v1.MonitorService(address, credentials, coordOptions);

  // --- the coordinator connects and subscribes with a filter -----------------------------
  const connected = await unary(sessions, 'Connect', {
    sessionId: COORDINATOR_ID,
    kind: 'SESSION_KIND_SUPERVISOR',
    capabilities: { streaming: true },
  });
  check(connected.session.sessionId === COORDINATOR_ID, `Connect: ${JSON.stringify(connected)}`);
  const types = [
    'EVENT_TYPE_TASK_STARTED',
    'EVENT_TYPE_TASK_PROGRESS',
    'EVENT_TYPE_REAL_TIME_UPDATE',
    'EVENT_TYPE_TASK_COMPLETED',
  ];
  const filter = { agentIds: [AGENT_ID], eventTypes: types };
  const subscribe = (extra) =>
    new Events(monitor, { filter, sessionId: COORDINATOR_ID, ...extra });
  let events = subscribe({});
  const start = await events.raw('STREAM_START');
  check(
    start.event.type === 'EVENT_TYPE_STREAM_START' && start.event.seq === '0',
    `the first message is ${start.event.type} seq ${start.event.seq}, wanted STREAM_START seq 0`,
  );
  check(
    JSON.stringify(start.event.stream.filter.agentIds) === JSON.stringify([AGENT_ID]),
    `STREAM_START echoes the filter ${JSON.stringify(start.event.stream.filter)}`,
  );
  ok(`coordinator ${COORDINATOR_ID} subscribed to ${AGENT_ID}'s events (${types.length} types)`);

  // --- the agent works; another agent makes noise -----------------------------------------
  const noise = await unary(agent, 'StartTask', {
    agentId: `node-other-${RUN}`,
    description: 'noise',
  });
  const taskId = `node-task-${RUN}`;
  const started = await unary(agent, 'StartTask', {
    taskId,
    agentId: AGENT_ID,
    description: 'node check',
  });
  check(
    started.task.status === 'TASK_STATUS_RUNNING' && started.task.version === '1',
    `StartTask: ${started.task.status} version ${started.task.version}`,
  );
  const seqs = [];
  for (const [progress, message] of [
    [0.25, 'a quarter'],
    [0.5, 'half'],
  ]) {
    const r = await unary(agent, 'ReportProgress', { taskId, progress, message });
    check(r.status === 'TASK_STATUS_RUNNING', `ReportProgress ${progress}: ${r.status}`);
    seqs.push(r.seq);
  }
  await unary(agent, 'ReportProgress', { taskId: noise.task.taskId, progress: 0.9 });
  const update = await unary(agent, 'PublishUpdate', {
    taskId,
    data: { fields: { phase: { stringValue: 'compile' } } },
  });
  ok(`agent ${AGENT_ID} started ${taskId}, reported 0.25 and 0.5, published an update`);

  // --- the coordinator sees exactly that, in order ----------------------------------------
  const seen = [];
  for (const what of ['TASK_STARTED', 'TASK_PROGRESS 0.25', 'TASK_PROGRESS 0.5', 'REAL_TIME_UPDATE']) {
    seen.push(await events.next(what));
  }
  for (const e of seen) {
    check(e.taskId === taskId && e.agentId === AGENT_ID, `an event of another task: ${JSON.stringify(e)}`);
  }
  check(
    JSON.stringify(seen.map((e) => e.type)) ===
      JSON.stringify([
        'EVENT_TYPE_TASK_STARTED',
        'EVENT_TYPE_TASK_PROGRESS',
        'EVENT_TYPE_TASK_PROGRESS',
        'EVENT_TYPE_REAL_TIME_UPDATE',
      ]),
    `event types ${seen.map((e) => e.type)}`,
  );
  check(
    JSON.stringify(seen.slice(1).map((e) => e.seq)) === JSON.stringify([...seqs, update.seq]),
    `seqs ${seen.map((e) => e.seq)}, the calls returned ${[...seqs, update.seq]}`,
  );
  check(
    seen[1].progress.progress === 0.25 && seen[2].progress.message === 'half',
    `progress details ${JSON.stringify(seen.slice(1, 3).map((e) => e.progress))}`,
  );
  check(
    seen[3].data.fields.phase.stringValue === 'compile',
    `REAL_TIME_UPDATE data ${JSON.stringify(seen[3].data)}`,
  );
  ok('the stream shows the 4 events in order with the seqs the calls returned, and no noise');

  // --- stop reading, miss two events, resume with afterSeq --------------------------------
  const lastSeen = seen[seen.length - 1].seq;
  events.close();
  const missed = [];
  for (const progress of [0.75, 1.0]) {
    missed.push((await unary(agent, 'ReportProgress', { taskId, progress })).seq);
  }
  const done = await unary(agent, 'CompleteTask', { taskId, result: { stringValue: 'built' } });
  events = subscribe({ afterSeq: lastSeen });
  const replayed = [];
  for (let i = 0; i < 3; i += 1) replayed.push(await events.next(`replayed event ${i + 1}`));
  const got = replayed.map((e) => [e.seq, e.type]);
  check(
    JSON.stringify(got.slice(0, 2)) ===
      JSON.stringify([
        [missed[0], 'EVENT_TYPE_TASK_PROGRESS'],
        [missed[1], 'EVENT_TYPE_TASK_PROGRESS'],
      ]) &&
      got[2][1] === 'EVENT_TYPE_TASK_COMPLETED' &&
      BigInt(got[2][0]) > BigInt(missed[1]),
    `afterSeq ${lastSeen} replayed ${JSON.stringify(got)}, ` +
      `wanted progress ${missed.join(' and ')}, then the completion`,
  );
  check(
    replayed[2].taskVersion === done.task.version,
    `TASK_COMPLETED task version ${replayed[2].taskVersion}, CompleteTask said ${done.task.version}`,
  );
  events.close();
  ok(`resubscribing with afterSeq=${lastSeen} replays exactly the 3 missed events`);

  // --- GetStatus -------------------------------------------------------------------------
  const status = await unary(monitor, 'GetStatus', { agentIds: [AGENT_ID] });
  const listed = status.tasks.map((t) => [t.taskId, t.status, t.progress]);
  check(
    JSON.stringify(listed) === JSON.stringify([[taskId, 'TASK_STATUS_COMPLETED', 1]]),
    `GetStatus(agentIds=[${AGENT_ID}]) listed ${JSON.stringify(listed)}`,
  );
  check(
    status.sessions.some((s) => s.sessionId === COORDINATOR_ID),
    `GetStatus sessions ${status.sessions.map((s) => s.sessionId)} lack ${COORDINATOR_ID}`,
  );
  ok('GetStatus shows the task COMPLETED at progress 1, and the coordinator session');

  // --- a bad call fails with its code ------------------------------------------------------
  try {
    await unary(agent, 'ReportProgress', { taskId: noise.task.taskId, progress: 1.5 });
    check(false, 'ReportProgress 1.5 succeeded');
  } catch (err) {
    if (err instanceof assert.AssertionError) throw err;
    check(err.code === grpc.status.INVALID_ARGUMENT, `ReportProgress 1.5 failed with ${err.code}: ${err.details}`);
    ok(`ReportProgress 1.5 fails with INVALID_ARGUMENT (${err.details})`);
  }

  await unary(sessions, 'Disconnect', { sessionId: COORDINATOR_ID });
  for (const client of [agent, sessions, monitor]) client.close();
}

const [protoDir, address] = process.argv.slice(2);
if (!protoDir || !address) {
  console.error('usage: node tests/node/check.js PROTO_DIR HOST:PORT');
  process.exit(2);
}
run(protoDir, address).then(
  () => {
    console.log(`node-check: ${passed} passed, 0 failed`);
    process.exit(0);
  },
  (err) => {
    console.error(`FAIL - ${err.message}`);
    console.error(`node-check: ${passed} passed, 1 failed`);
    process.exit(1);
  },
);
