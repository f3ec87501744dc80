// Run a script under the real MicroPython 1.27 WebAssembly port (the npm package in ./node_modules).
//
//   node run.mjs < job.json
//
// The job is one JSON object on stdin:
//   {"files": {"/lib/lifeline/protocols/frame.py": "<base64>", ...},   files to create first (absolute paths)
//    "script": "<python source>"  or  "steps": ["<source>", ...],     what to run
//    "heapsize": 262144, "pystack": 2048, "timeout": 60}               optional
//
// "steps" run one after another in the same interpreter and share __main__'s globals. The split between
// steps matters for memory: this port never collects garbage while Python code runs (the WebAssembly
// stack cannot be scanned, so gc.collect() and automatic collection only mark a collection as pending
// and the heap grows instead); the pending collection runs when control returns to JavaScript, i.e.
// between two steps. "heapsize" is therefore the initial heap, not a limit.
//
// Output: the script's stdout and stderr are streamed to ours. On an uncaught exception the traceback
// goes to stderr and the exit status is 1; SystemExit is honoured (sys.exit(n) exits n, a non-integer
// argument is printed to stderr and exits 1). Other statuses: 2 the job is malformed, 3 the runtime could
// not be loaded, 124 the job ran out of time (the interpreter runs in a worker thread that is terminated,
// so this runner never hangs on a `while True: pass`).

import { Worker, isMainThread, parentPort, workerData } from "node:worker_threads";
import { posix } from "node:path";

const PACKAGE = "./node_modules/@micropython/micropython-webassembly-pyscript/micropython.mjs";
const EXIT_EXCEPTION = 1;
const EXIT_BAD_JOB = 2;
const EXIT_RUNTIME = 3;
const EXIT_TIMEOUT = 124;
const DEFAULT_TIMEOUT_S = 60;
const FLUSH_BYTES = 8192;

// Runs each step inside __main__'s globals and turns its outcome into an exit status, so the status of
// SystemExit is read from the exception object rather than parsed from text. The harness frame itself
// ("<stdin>") is dropped from tracebacks; user code is compiled under its own name.
const HARNESS = `
def _lifeline_step(_lifeline_src, _lifeline_name):
    import sys, io
    try:
        exec(compile(_lifeline_src, _lifeline_name, "exec"), globals())
        return 0
    except SystemExit as e:
        code = e.args[0] if e.args else None
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        sys.stderr.write(str(code) + "\\n")
        return 1
    except BaseException as e:
        buf = io.StringIO()
        sys.print_exception(e, buf)
        lines = buf.getvalue().split("\\n")
        sys.stderr.write("\\n".join(l for l in lines if not l.startswith('  File "<stdin>"')))
        return 1
`;

function fail(status, message) {
  process.stderr.write(`run.mjs: ${message}\n`);
  process.exit(status);
}

function validateJob(text) {
  let job;
  try {
    job = JSON.parse(text);
  } catch (error) {
    fail(EXIT_BAD_JOB, `job is not JSON: ${error.message}`);
  }
  if (job === null || typeof job !== "object" || Array.isArray(job)) fail(EXIT_BAD_JOB, "job must be a JSON object");
  const hasScript = typeof job.script === "string";
  const hasSteps = Array.isArray(job.steps) && job.steps.every((s) => typeof s === "string");
  if (hasScript === hasSteps) fail(EXIT_BAD_JOB, 'job needs exactly one of "script" (string) or "steps" (list of strings)');
  const files = job.files ?? {};
  if (files === null || typeof files !== "object" || Array.isArray(files)) fail(EXIT_BAD_JOB, '"files" must be an object');
  for (const [path, content] of Object.entries(files)) {
    if (!path.startsWith("/") || path.split("/").includes("..")) fail(EXIT_BAD_JOB, `file path must be absolute without "..": ${path}`);
    if (typeof content !== "string") fail(EXIT_BAD_JOB, `file content must be base64 text: ${path}`);
  }
  for (const key of ["heapsize", "pystack", "timeout"]) {
    if (job[key] !== undefined && job[key] !== null && !(typeof job[key] === "number" && job[key] > 0)) {
      fail(EXIT_BAD_JOB, `"${key}" must be a positive number`);
    }
  }
  return {
    files,
    steps: hasScript ? [job.script] : job.steps,
    heapsize: Math.floor(job.heapsize ?? 262144),
    pystack: job.pystack ? Math.floor(job.pystack) : undefined,
    timeout: job.timeout ?? DEFAULT_TIMEOUT_S,
  };
}

async function main() {
  if (process.stdin.isTTY) fail(EXIT_BAD_JOB, "pipe a JSON job on stdin (see the comment at the top of run.mjs)");
  const chunks = [];
  try {
    for await (const chunk of process.stdin) chunks.push(chunk);
  } catch (error) {
    fail(EXIT_BAD_JOB, `cannot read the job from stdin: ${error.message}`);
  }
  const text = Buffer.concat(chunks).toString("utf8");
  const job = validateJob(text);
  let finished = false;
  const worker = new Worker(new URL(import.meta.url), { workerData: job, stdout: false, stderr: false });
  const timer = setTimeout(() => {
    if (finished) return;
    finished = true;
    process.stderr.write(`\nrun.mjs: timed out after ${job.timeout} s; MicroPython stopped\n`);
    // terminate() interrupts running WebAssembly; exit() makes sure nothing can keep us alive.
    worker.terminate().finally(() => process.exit(EXIT_TIMEOUT));
  }, job.timeout * 1000);
  worker.on("message", (msg) => {
    if (msg.kind === "out") process.stdout.write(msg.data);
    else if (msg.kind === "err") process.stderr.write(msg.data);
    else if (msg.kind === "done" && !finished) {
      finished = true;
      clearTimeout(timer);
      process.exitCode = msg.status & 0xff;
      worker.terminate();
    }
  });
  worker.on("error", (error) => {
    if (finished) return;
    finished = true;
    clearTimeout(timer);
    fail(EXIT_RUNTIME, `MicroPython runtime failed: ${error && error.stack ? error.stack : error}`);
  });
  worker.on("exit", () => {
    if (finished) return;
    finished = true;
    clearTimeout(timer);
    fail(EXIT_RUNTIME, "MicroPython worker exited without a result");
  });
}

// Collects the interpreter's output bytes and forwards them in chunks (a line at a time at most FLUSH_BYTES).
function makeStream(kind) {
  let buffer = new Uint8Array(FLUSH_BYTES);
  let used = 0;
  const flush = () => {
    if (used === 0) return;
    parentPort.postMessage({ kind, data: buffer.slice(0, used) });
    used = 0;
  };
  const write = (bytes) => {
    for (const byte of bytes) {
      buffer[used++] = byte;
      if (byte === 10 || used === FLUSH_BYTES) flush();
    }
  };
  return { write, flush };
}

async function runWorker(job) {
  const out = makeStream("out");
  const err = makeStream("err");
  let status = 0;
  try {
    const { loadMicroPython } = await import(new URL(PACKAGE, import.meta.url));
    const options = { heapsize: job.heapsize, stdout: out.write, stderr: err.write, linebuffer: false };
    if (job.pystack !== undefined) options.pystack = job.pystack;
    let mp;
    try {
      mp = await loadMicroPython(options);
    } catch (error) {
      err.write(new TextEncoder().encode(`run.mjs: cannot load MicroPython: ${error.message}\n`));
      status = EXIT_RUNTIME;
    }
    if (mp) {
      for (const [path, content] of Object.entries(job.files)) {
        mp.FS.mkdirTree(posix.dirname(path));
        mp.FS.writeFile(path, Buffer.from(content, "base64"));
      }
      mp.runPython("import sys\nif '/lib' not in sys.path:\n    sys.path.append('/lib')\n" + HARNESS);
      const names = job.steps.length === 1 ? ["<script>"] : job.steps.map((_, i) => `<step ${i + 1}>`);
      for (let i = 0; i < job.steps.length && status === 0; i++) {
        mp.globals.set("_lifeline_src", job.steps[i]);
        mp.runPython(`_lifeline_rc = _lifeline_step(_lifeline_src, ${JSON.stringify(names[i])})\ndel _lifeline_src`);
        status = Number(mp.globals.get("_lifeline_rc"));
        mp.runPython("del _lifeline_rc");
      }
    }
  } catch (error) {
    err.write(new TextEncoder().encode(`run.mjs: ${error && error.message ? error.message : error}\n`));
    status = EXIT_RUNTIME;
  }
  out.flush();
  err.flush();
  parentPort.postMessage({ kind: "done", status });
}

if (isMainThread) {
  await main();
} else {
  await runWorker(workerData);
}
