'use strict';
// A tripwire worker in plain Node.js, without the Python SDK: one job,
// "node-job", run for every "node.ping" event. The handler doubles payload.n in
// a cached task, logs a line and returns {doubled}. The comments follow the
// numbered steps of proto/tripwire/v1/worker_service.proto.
//
//   npm ci && node worker.js 127.0.0.1:50051     (or TRIPWIRE_URL, TRIPWIRE_API_KEY)
const os = require('os');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const definition = protoLoader.loadSync('tripwire/v1/worker_service.proto', {
  includeDirs: [path.join(__dirname, '..', '..', 'proto')], // google/protobuf/* ship with proto-loader
  keepCase: false, // fields in camelCase: run_request -> runRequest
  enums: String, // 'TASK_STATUS_RUNNING', not 1
  longs: Number, // RunLog.seq and Heartbeat.received are uint64s
  oneofs: true, // msg.message names the oneof member that is set
  defaults: true,
});
const { WorkerService } = grpc.loadPackageDefinition(definition).tripwire.v1;

// google.protobuf.Value <-> plain JSON. Decoded, a Value is {kind: 'numberValue',
// numberValue: 42}; a struct is {structValue: {fields: {key: Value}}}.
function toValue(json) {
  if (json === null || json === undefined) return { nullValue: 'NULL_VALUE' };
  if (typeof json === 'number') return { numberValue: json };
  if (typeof json === 'string') return { stringValue: json };
  if (typeof json === 'boolean') return { boolValue: json };
  if (Array.isArray(json)) return { listValue: { values: json.map(toValue) } };
  const entries = Object.entries(json).map(([key, item]) => [key, toValue(item)]);
  return { structValue: { fields: Object.fromEntries(entries) } };
}
function fromValue(value) {
  if (!value) return null;
  switch (value.kind) {
    case 'numberValue': case 'stringValue': case 'boolValue': return value[value.kind];
    case 'listValue': return (value.listValue.values || []).map(fromValue);
    case 'structValue': return Object.fromEntries(
      Object.entries(value.structValue.fields || {}).map(([key, item]) => [key, fromValue(item)]));
    default: return null; // nullValue, or unset
  }
}

// The job this worker serves, registered by `hello`, and its handler.
const JOB = { id: 'node-job', version: '1.0.0', trigger: { event: { names: ['node.ping'] } } };
async function handler(payload, io) {
  const doubled = await io.runTask('double', () => payload.n * 2);
  io.log('LOG_LEVEL_INFO', 'doubled');
  return { doubled };
}

class Stopped extends Error {} // thrown into a handler the server told us to stop

// One execution of one attempt of a run: the `io` a handler sees.
class Execution {
  constructor(request, cachedTasks, send) {
    this.runId = request.run.id;
    this.attempt = request.run.attempt; // the fencing token: on every message for this run
    this.payload = fromValue(request.event && request.event.payload);
    this.cached = new Map(cachedTasks.map((t) => [`${t.parentId}/${t.key}`, t]));
    this.send = send;
    this.pending = new Map(); // requestId -> {resolve, reject}: awaiting a taskResult
    this.nextRequest = 0;
    this.seq = 0;
    this.stopped = false;
  }

  // Step 4: one io call. A COMPLETED cached task answers it without a message.
  async runTask(key, fn) {
    const hit = this.cached.get(`/${key}`);
    if (hit && hit.status === 'TASK_STATUS_COMPLETED') return fromValue(hit.output);
    const requestId = `${this.runId}:${this.attempt}:${++this.nextRequest}`;
    const ids = { requestId, runId: this.runId, attempt: this.attempt };
    let task = await this.ask(requestId, { task: { ...ids, key, name: key, kind: 'TASK_KIND_RUN' } });
    if (task.status === 'TASK_STATUS_RUNNING') { // ours to execute
      let outcome;
      try {
        outcome = { output: toValue(await fn()) };
      } catch (err) {
        outcome = { error: errorInfo(err) };
      }
      task = await this.ask(requestId, { taskComplete: { ...ids, taskId: task.id, ...outcome } });
    }
    switch (task.status) {
      case 'TASK_STATUS_COMPLETED': return fromValue(task.output);
      case 'TASK_STATUS_ERRORED': throw Object.assign(new Error(task.error.message), { type: task.error.type });
      // WAITING (a retry backoff or a wait): the server dispatches the run again when due.
      default: throw new Stopped(`task ${key} is ${task.status}`);
    }
  }

  // Step 5: log lines are numbered per execution (enough here: no task function logs);
  // nothing answers them.
  log(level, message) {
    if (this.stopped) throw new Stopped('stopped');
    this.send({ log: { runId: this.runId, attempt: this.attempt, seq: ++this.seq, level, message } });
  }

  ask(requestId, message) {
    if (this.stopped) return Promise.reject(new Stopped('stopped'));
    return new Promise((resolve, reject) => {
      this.pending.set(requestId, { resolve, reject });
      this.send(message);
    });
  }
  resolve(result) { // a taskResult for one of our requests
    const waiter = this.pending.get(result.requestId);
    this.pending.delete(result.requestId);
    if (waiter) waiter.resolve(result.task);
  }
  stop(reason) { // step 8 (cancel/abandon), or the worker is closing: unwind the handler
    this.stopped = true;
    for (const waiter of this.pending.values()) waiter.reject(new Stopped(reason));
    this.pending.clear();
  }
}

function errorInfo(err) {
  return { type: (err && (err.type || err.name)) || 'Error', message: String(err && err.message), stack: String(err && err.stack) };
}

function main() {
  let address = process.argv[2] || process.env.TRIPWIRE_URL || 'localhost:50051';
  const secure = /^(https|grpcs):\/\//.test(address);
  address = address.replace(/^[a-z]+:\/\//, '').replace(/\/$/, '');
  const credentials = secure ? grpc.credentials.createSsl() : grpc.credentials.createInsecure();
  const metadata = new grpc.Metadata();
  if (process.env.TRIPWIRE_API_KEY) metadata.set('authorization', `Bearer ${process.env.TRIPWIRE_API_KEY}`);

  // Step 3: a cached task larger than a page comes whole; take what the server may send.
  const options = { 'grpc.max_receive_message_length': 64 * 1024 * 1024 };
  const call = new WorkerService(address, credentials, options).RunJob(metadata);
  const runs = new Map(); // runId -> Execution
  const assembling = new Map(); // runId -> {request, tasks}: cached_tasks pages still to come
  let heartbeat = null;
  let received = 0; // messages read from the stream, the welcome included, said in each heartbeat
  let draining = false;
  let closing = false;
  let exitCode = 0;
  const send = (message) => { if (!closing) call.write(message); };

  function close(code) { // half-close the stream; the server then ends it. Runs still
    // executing are stopped unreported: the server requeues them when the lease runs out.
    if (closing) return;
    closing = true;
    exitCode = code;
    clearInterval(heartbeat);
    for (const execution of runs.values()) execution.stop('worker closing');
    call.end();
    setTimeout(() => process.exit(code), 2000).unref(); // do not wait long on a server that is gone
  }

  // Steps 4-6: run the handler, then report its return value or exception.
  async function execute(request, cachedTasks) {
    const old = runs.get(request.run.id);
    if (old) old.stop('superseded by a newer attempt');
    const execution = new Execution(request, cachedTasks, send);
    runs.set(execution.runId, execution);
    const ids = { runId: execution.runId, attempt: execution.attempt };
    try {
      const output = await handler(execution.payload, execution);
      if (!execution.stopped) send({ runResult: { ...ids, output: toValue(output) } });
    } catch (err) {
      if (!(err instanceof Stopped) && !execution.stopped) send({ runResult: { ...ids, error: errorInfo(err) } });
    } finally {
      if (runs.get(execution.runId) === execution) runs.delete(execution.runId);
      if (draining && runs.size === 0) close(0);
    }
  }

  // Step 1: hello first, with the jobs and the capacity.
  send({ hello: { workerId: `node-${os.hostname()}-${process.pid}`, jobs: [JOB], capacity: 4, sdk: 'tripwire-node-example/0.1.0' } });

  call.on('data', (msg) => {
    received += 1;
    const body = msg[msg.message];
    const current = body && body.runId && runs.get(body.runId);
    const mine = current && current.attempt === body.attempt ? current : null;
    switch (msg.message) {
      case 'welcome': // step 2: heartbeat every interval, saying how many messages were read
        heartbeat = setInterval(() => send({ heartbeat: { received } }), body.heartbeatIntervalMs || 5000);
        console.log('ready');
        break;
      case 'runRequest': // step 3: start now, or once every cached_tasks page is in
        if (draining) break;
        if (body.cachedTasksComplete) execute(body, body.cachedTasks);
        else assembling.set(body.run.id, { request: body, tasks: [...body.cachedTasks] });
        break;
      case 'cachedTasks': {
        const entry = assembling.get(body.runId);
        if (!entry || entry.request.run.attempt !== body.attempt) break;
        entry.tasks.push(...body.tasks);
        if (body.last) { assembling.delete(body.runId); execute(entry.request, entry.tasks); }
        break;
      }
      case 'taskResult':
        if (mine) mine.resolve(body);
        break;
      case 'cancel': case 'abandon': // step 8: stop that run, report nothing
        console.error(`run ${body.runId} attempt ${body.attempt}: ${msg.message} (${body.reason})`);
        if (mine) { mine.stop(body.reason); runs.delete(body.runId); }
        break;
      case 'drain': // step 9: no new work; finish in-flight runs, then close
        draining = true;
        assembling.clear();
        if (runs.size === 0) close(0);
        else setTimeout(() => close(0), body.deadlineMs).unref();
        break;
      case 'rejected': // step 10: a bug in this worker; say what and stop
        console.error(`rejected: code ${body.code} ${body.message} (request ${body.requestId || '-'}, run ${body.runId || '-'})`);
        close(1);
        break;
      // Anything else is a message kind newer than this worker: ignore it.
    }
  });
  call.on('error', () => {}); // reported by 'status' below
  call.on('status', (status) => { // the stream is over
    if (!closing) console.error(`stream ended: ${grpc.status[status.code]} ${status.details}`);
    process.exit(closing ? exitCode : 1);
  });
  for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => close(0));
}

main();
