// The fitserve dashboard: fills the server-rendered pages from the /v1 API.
// Plain browser JavaScript, no build step. Text goes into the page with textContent only, so
// nothing a user typed (job names, metric names, errors) is ever parsed as HTML.
"use strict";

(function () {
  const CSRF = document.querySelector('meta[name="fitserve-csrf"]').content;
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const LIVE_MS = 1000;
  const LIST_MS = 2000;
  const STREAMING_MS = 5000;
  // The kinds of a job's Server-Sent Events (GET /v1/jobs/<id>/events); each one means the
  // job changed, so the page refreshes at once instead of at the next poll.
  const EVENT_KINDS = ["status", "epoch", "checkpoint", "training_started", "stopped", "interrupted", "requeued"];
  // Each PATCH of a dashboard upload: well under the server's per-request cap.
  const UPLOAD_CHUNK_BYTES = 16 * 1024 * 1024;
  const PALETTE = ["#1f5fbf", "#b3261e", "#1b7f3b", "#7b3fa0", "#a15c00", "#00707a",
    "#c2185b", "#5d4037", "#37474f", "#827717"];
  const ID = /^[0-9a-f]{32}$/;
  const SVG = "http://www.w3.org/2000/svg";

  class ApiError extends Error {
    constructor(status, problem) {
      super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
      this.status = status;
      this.problem = problem || {};
    }
  }

  // One call to the API. `body`: FormData, a JSON string sent as-is, or a value to encode.
  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (CSRF) headers["X-Fitserve-CSRF"] = CSRF;
    let payload;
    if (body instanceof FormData) {
      payload = body;
    } else if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      payload = typeof body === "string" ? body : JSON.stringify(body);
    }
    const response = await fetch(path, { method, headers, body: payload, credentials: "same-origin" });
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (error) {
      data = { detail: text };
    }
    if (response.status === 401 && CSRF) {
      // The session ended (signed out elsewhere, expired, key removed): sign in again.
      window.location.assign("/sign-in?next=" + encodeURIComponent(window.location.pathname));
    }
    if (!response.ok) throw new ApiError(response.status, data);
    return { data, response };
  }

  // A file sent as a resumable upload (tus 1.0, tus-js-client): in chunks, resumed where an
  // interrupted upload of the same file stopped; resolves to the upload's id.
  function uploadResumable(file, onProgress) {
    return new Promise((resolve, reject) => {
      const upload = new tus.Upload(file, {
        endpoint: "/v1/uploads",
        headers: CSRF ? { "X-Fitserve-CSRF": CSRF } : {},
        chunkSize: UPLOAD_CHUNK_BYTES,
        retryDelays: [0, 1000, 3000],
        metadata: { filename: file.name },
        removeFingerprintOnSuccess: true,
        onProgress,
        onError: (error) => reject(uploadError(error)),
        onSuccess: () => resolve(upload.url.split("/").pop()),
      });
      upload.findPreviousUploads().then((previous) => {
        if (previous.length) upload.resumeFromPreviousUpload(previous[0]);
        upload.start();
      }, reject);
    });
  }

  // A dataset the server reads after answering (`processing`) once it is ready; a failed one
  // is thrown as its problem (the reason, and the archive member at fault if any).
  async function settledDataset(manifest) {
    while (manifest.status === "processing") {
      await new Promise((resolve) => setTimeout(resolve, 500));
      manifest = (await api("GET", `/v1/datasets/${manifest.id}`)).data;
    }
    if (manifest.status === "failed") {
      const error = manifest.error || {};
      const member = error.member ? ` (${error.member})` : "";
      throw new ApiError(422, { detail: `The dataset failed${member}: ${error.message}` });
    }
    return manifest;
  }

  // tus-js-client's error as the API's: the problem document the server answered, if any.
  function uploadError(error) {
    const response = error.originalResponse;
    if (!response) return error;
    let problem;
    try {
      problem = JSON.parse(response.getBody());
    } catch (parseError) {
      problem = { detail: error.message };
    }
    return new ApiError(response.getStatus(), problem);
  }

  function formatBytes(count) {
    for (const [unit, size] of [["GB", 1e9], ["MB", 1e6], ["kB", 1e3]]) {
      if (count >= size) return `${(count / size).toFixed(1)} ${unit}`;
    }
    return `${count} B`;
  }

  function element(tag, text, attributes) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
    return node;
  }

  // A problem document as a message and its list of located errors.
  function showProblem(target, error) {
    target.replaceChildren();
    const message = element("p", error.message, { class: "error", role: "alert" });
    target.append(message);
    const errors = (error.problem && error.problem.errors) || [];
    if (errors.length) {
      const list = element("ul", null, { class: "problems" });
      for (const item of errors) {
        const line = `${item.path || "/"}: ${item.message}` +
          (item.expected !== undefined ? ` (expected ${item.expected}` : "") +
          (item.received !== undefined ? `; received ${JSON.stringify(item.received)})` :
            item.expected !== undefined ? ")" : "");
        list.append(element("li", line));
      }
      target.append(list);
    }
  }

  function formatNumber(value) {
    if (typeof value !== "number") return value === null || value === undefined ? "–" : String(value);
    return Math.abs(value) >= 1000 || value === Math.trunc(value) ? String(value) : String(Number(value.toPrecision(4)));
  }

  function formatMetrics(metrics) {
    return Object.entries(metrics || {}).map(([name, value]) => `${name} ${formatNumber(value)}`).join(", ");
  }

  // Predictions as JSON, one row per line.
  function formatRows(rows) {
    if (!Array.isArray(rows)) return JSON.stringify(rows, null, 1);
    return "[\n" + rows.map((row) => "  " + JSON.stringify(row)).join(",\n") + "\n]";
  }

  function oneLineJson(value) {
    if (value === null || typeof value !== "object") return JSON.stringify(value);
    if (Array.isArray(value)) return `[${value.map(oneLineJson).join(", ")}]`;
    return `{${Object.entries(value).map(([key, item]) => `${JSON.stringify(key)}: ${oneLineJson(item)}`).join(", ")}}`;
  }

  // JSON for people: a value that fits a line stays on one, larger ones open up by level.
  function formatJson(value, indent = "") {
    const flat = oneLineJson(value);
    if (flat.length + indent.length <= 88 || value === null || typeof value !== "object") return flat;
    const inner = indent + "  ";
    const items = Array.isArray(value) ? value.map((item) => inner + formatJson(item, inner))
      : Object.entries(value).map(([key, item]) => `${inner}${JSON.stringify(key)}: ${formatJson(item, inner)}`);
    const [open, close] = Array.isArray(value) ? ["[", "]"] : ["{", "}"];
    return `${open}\n${items.join(",\n")}\n${indent}${close}`;
  }

  // A table with a header row; `rows` are arrays of cell text (or nodes).
  function table(headers, rows, attributes) {
    const node = element("table", null, attributes);
    const head = element("tr");
    for (const header of headers) head.append(element("th", header, { scope: "col" }));
    const body = element("tbody");
    for (const cells of rows) {
      const row = element("tr");
      for (const cell of cells) {
        const td = element("td");
        if (cell instanceof Node) td.append(cell);
        else td.textContent = cell;
        row.append(td);
      }
      body.append(row);
    }
    const thead = element("thead");
    thead.append(head);
    node.append(thead, body);
    return node;
  }

  // Each row's predictions in a readable table: the values, and for a row of scores (a
  // softmax's probabilities) the most likely class id with its score.
  function predictionsTable(rows) {
    const list = Array.isArray(rows) ? rows : [rows];
    const scores = list.every((row) => Array.isArray(row) && row.length > 1 &&
      row.every((value) => typeof value === "number" && value >= 0 && value <= 1));
    const headers = ["Row", "Prediction"].concat(scores ? ["Most likely class", "Score"] : []);
    return table(headers, list.map((row, index) => {
      const cells = [String(index), Array.isArray(row) ? row.map(formatNumber).join(", ") : formatNumber(row)];
      if (scores) {
        const best = row.indexOf(Math.max(...row));
        cells.push(String(best), formatNumber(row[best]));
      }
      return cells;
    }), { id: "predictions-table" });
  }

  // TF Serving's classify answer: per row, [class, score] pairs, best first.
  function classesTable(result) {
    return table(["Row", "Class", "Score", "Next classes"], result.map((pairs, index) => [
      String(index), String(pairs[0][0]), formatNumber(pairs[0][1]),
      pairs.slice(1, 4).map(([name, score]) => `${name} ${formatNumber(score)}`).join(", "),
    ]), { id: "predictions-table" });
  }

  function formatTags(tags) {
    const entries = Object.entries(tags || {});
    return entries.length ? entries.map(([key, value]) => `${key}:${value}`).join(", ") : "–";
  }

  // A queued job's place: "2nd in line (1 ahead), expected to start 12:03".
  function formatQueue(queue) {
    if (!queue || queue.position === undefined) return "";
    const start = queue.expected_start ? `, expected to start ${formatTime(queue.expected_start)}` : "";
    return `position ${queue.position} (${queue.ahead} ahead)${start}`;
  }

  function formatStop(stop) {
    if (!stop) return "–";
    const best = stop.best_epoch ? `, best epoch ${stop.best_epoch}` : "";
    const monitor = stop.monitor ? ` (${stop.monitor})` : "";
    return `${stop.reason.replace(/_/g, " ")} at epoch ${stop.epoch}${best}${monitor}`;
  }

  // A job's completed epochs and their history: an epoch a stop cut short (its checkpoint is
  // marked partial) has metrics over a few batches, which would draw a spike training never had.
  function completedEpochs(job, metrics) {
    const partial = new Set(job.checkpoints.filter((c) => c.partial).map((c) => c.version));
    const keep = metrics.epochs.map((epoch, index) => (partial.has(epoch) ? -1 : index))
      .filter((index) => index >= 0);
    const names = Object.keys(metrics.history);
    return {
      partial,
      names,
      epochs: keep.map((index) => metrics.epochs[index]),
      history: Object.fromEntries(
        names.map((name) => [name, keep.map((index) => metrics.history[name][index])])),
    };
  }

  // Several series over their own epochs, aligned on 1..the last epoch (gaps are null).
  function alignSeries(runs) {
    const last = Math.max(0, ...runs.map((run) => run.epochs[run.epochs.length - 1] || 0));
    const epochs = Array.from({ length: last }, (_, index) => index + 1);
    const columns = runs.map((run) => {
      const column = new Array(last).fill(null);
      run.epochs.forEach((epoch, index) => { column[epoch - 1] = run.values[index]; });
      return column;
    });
    return { epochs, columns };
  }

  function formatTime(value) {
    return value ? new Date(value).toLocaleString() : "–";
  }

  function progressText(job) {
    const progress = job.progress || {};
    const epochs = progress.epochs ? `/${progress.epochs}` : "";
    const eta = progress.eta_seconds && !TERMINAL.has(job.status) ? `, about ${Math.ceil(progress.eta_seconds)} s left` : "";
    return `epoch ${progress.epoch || 0}${epochs}${eta}`;
  }

  // Where a job trains: its GPUs (else its devices), the worker, and the library versions.
  function formatDevice(job) {
    const device = job.device;
    if (!device) return job.worker || "–";
    const where = device.gpus && device.gpus.length ? device.gpus.join(", ")
      : (device.replica_devices || device.devices || []).join(", ");
    const worker = job.worker ? ` on ${job.worker}` : "";
    return `${where}${worker} (TensorFlow ${device.tensorflow}, Keras ${device.keras})`;
  }

  function statusBadge(node, status) {
    node.textContent = status;
    node.className = `status status-${status}`;
  }

  // Poll `refresh` while the tab is visible, every `interval()` ms; it returns false to stop.
  function poll(refresh, interval) {
    let timer = null;
    async function tick() {
      timer = null;
      let again = true;
      try {
        again = (await refresh()) !== false;
      } catch (error) {
        console.warn("refresh failed", error);
      }
      if (again && !document.hidden) timer = setTimeout(tick, interval());
    }
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && timer === null) tick();
    });
    tick();
  }

  // The upload form (jobs and datasets pages) -------------------------------------------

  // `onDataset(manifest)` runs with each dataset the form created.
  function startUploadForm(onDataset) {
    document.getElementById("upload-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const result = document.getElementById("upload-result");
      const file = document.getElementById("dataset-file").files[0];
      const options = {};
      for (const field of ["label", "name"]) {
        const value = document.getElementById(`dataset-${field}`).value.trim();
        if (value) options[field] = value;
      }
      result.textContent = "Uploading…";
      try {
        const uploadId = await uploadResumable(file, (sent, total) => {
          result.textContent = `Uploading… ${formatBytes(sent)} of ${formatBytes(total)} ` +
            `(${Math.floor((100 * sent) / Math.max(total, 1))}%)`;
        });
        result.textContent = "Reading the dataset…";
        const created = await api("POST", "/v1/datasets", { upload: uploadId, ...options });
        const data = await settledDataset(created.data);
        const arrays = Object.entries(data.arrays)
          .map(([name, array]) => `${name} [${array.shape.join(", ")}] ${array.dtype}`).join("; ");
        result.replaceChildren(element("p", `Dataset ${data.id}: ${arrays}`, { id: "dataset-id", "data-id": data.id }));
        onDataset(data);
      } catch (error) {
        showProblem(result, error);
      }
    });
  }

  // The jobs page ------------------------------------------------------------------------

  // The `?tag=` filters of the page's address, as the API takes them (repeated `tag=`).
  function tagQuery() {
    const filter = new URLSearchParams(window.location.search).get("tag") || "";
    const tags = filter.split(",").map((tag) => tag.trim()).filter(Boolean);
    return { filter, query: tags.map((tag) => `&tag=${encodeURIComponent(tag)}`).join("") };
  }

  function jobRow(job, selected) {
    const row = element("tr", null, { "data-job-id": job.id });
    const pick = element("input", null, { type: "checkbox", "aria-label": `Compare ${job.name || job.id}` });
    pick.checked = selected.has(job.id);
    pick.addEventListener("change", () => {
      if (pick.checked) selected.add(job.id);
      else selected.delete(job.id);
      document.getElementById("compare-button").disabled = selected.size < 1;
    });
    const choose = element("td");
    choose.append(pick);
    const link = element("a", job.name || job.id.slice(0, 8), { href: `/jobs/${job.id}` });
    const first = element("td");
    first.append(link, element("div", job.id, { class: "muted small" }));
    const status = element("td");
    const badge = element("span");
    statusBadge(badge, job.status);
    status.append(badge);
    const queue = element("td", job.status === "queued" ? formatQueue(job.queue) : "", { class: "queue-place" });
    const progress = element("td");
    const bar = element("progress", null, { max: "1", value: String(job.progress.fraction || 0) });
    bar.setAttribute("aria-label", `Job ${job.name || job.id} progress`);
    progress.append(bar, element("span", " " + progressText(job)));
    const metrics = job.progress.metrics || (job.metrics && job.metrics.last) || {};
    row.append(choose, first, status, queue, progress, element("td", formatNumber(metrics.loss)),
      element("td", formatTags(job.tags)), element("td", formatTime(job.created_at)));
    return row;
  }

  async function showUsage() {
    const { data } = await api("GET", "/v1/usage");
    const facts = document.getElementById("usage");
    facts.replaceChildren();
    const quota = data.quota_bytes ? ` of ${formatBytes(data.quota_bytes)}` : "";
    const rows = [["Used", `${formatBytes(data.bytes)}${quota}`]];
    for (const kind of ["datasets", "jobs", "checkpoints", "exports"]) {
      if (data[kind]) rows.push([kind[0].toUpperCase() + kind.slice(1), `${data[kind].count} (${formatBytes(data[kind].bytes)})`]);
    }
    rows.push(["Finished jobs expire", data.job_ttl_seconds
      ? `after ${Math.round(data.job_ttl_seconds / 86400 * 10) / 10} days unless pinned` : "never"]);
    for (const [name, value] of rows) facts.append(element("dt", name), element("dd", value));
  }

  function startJobsPage() {
    const body = document.querySelector("#jobs tbody");
    const updated = document.getElementById("jobs-updated");
    const selected = new Set();
    const { filter, query } = tagQuery();
    document.getElementById("tag-filter-input").value = filter;

    async function refreshJobs() {
      const { data } = await api("GET", `/v1/jobs?limit=100${query}`);
      body.replaceChildren(...data.items.map((job) => jobRow(job, selected)));
      if (!data.items.length) {
        const row = element("tr");
        row.append(element("td", filter ? "No job carries those tags."
          : "No jobs yet: upload a dataset and submit one below.", { colspan: "8" }));
        body.append(row);
      }
      updated.textContent = `${data.items.length} job(s)${filter ? ` tagged ${filter}` : ""}, ` +
        `updated ${new Date().toLocaleTimeString()}`;
    }

    document.getElementById("compare-button").addEventListener("click", () => {
      window.location.assign(`/compare?jobs=${[...selected].join(",")}`);
    });
    const editor = startRequestEditor();
    startUploadForm((dataset) => {
      showUsage().catch(console.warn);
      editor.chooseDataset(dataset);
    });
    showUsage().catch(console.warn);
    poll(refreshJobs, () => LIST_MS);
  }

  // The request editor -----------------------------------------------------------------

  // What a dataset's label array asks of the output layer: one softmax unit per class (named
  // classes, else integer labels 0..max), else one linear unit per target column.
  function outputFor(dataset, name) {
    const array = dataset.arrays[name];
    const stats = array.stats || {};
    const names = dataset.classes && dataset.classes[name];
    if (names || (/^u?int/.test(array.dtype) && array.shape.length === 1 && stats.max !== undefined)) {
      return {
        units: names ? names.length : Math.max(2, Number(stats.max) + 1), activation: "softmax",
        loss: "sparse_categorical_crossentropy", metrics: ["accuracy"],
      };
    }
    return {
      units: array.shape.length > 1 ? array.shape[1] : 1, activation: "linear",
      loss: "mean_squared_error", metrics: ["mean_absolute_error"],
    };
  }

  // The request fitted to a dataset: its arrays in `data`, x's rows as the input shape, and
  // the last Dense layer, loss and metrics fitted to y.
  function fitRequestToDataset(request, dataset) {
    const names = Object.keys(dataset.arrays || {});
    const x = names.includes("x") ? "x" : names[0];
    const y = names.includes("y") ? "y" : names.find((name) => name !== x);
    request.data = { ...(request.data || {}), dataset: dataset.id };
    if (x) request.data.x = x;
    if (y) request.data.y = y;
    const model = request.model;
    if (!x || !model || !Array.isArray(model.layers)) return request;
    model.input_shape = dataset.arrays[x].shape.slice(1);
    const last = model.layers[model.layers.length - 1];
    if (y && last && last.class_name === "Dense") {
      const output = outputFor(dataset, y);
      last.config = { ...(last.config || {}), units: output.units, activation: output.activation };
      request.compile = { ...(request.compile || {}), loss: output.loss, metrics: output.metrics };
    }
    return request;
  }

  // Where the cursor stands in an unfinished JSON text: the containers around it (each with
  // its place in its parent, its current key or index, and a `class_name` seen in it), and the
  // word being typed.
  function cursorContext(text) {
    const stack = [];
    let index = 0;
    let partial = null;
    while (index < text.length) {
      const char = text[index];
      const top = stack[stack.length - 1];
      if (char === '"') {
        let end = index + 1;
        while (end < text.length && text[end] !== '"') end += text[end] === "\\" ? 2 : 1;
        if (end >= text.length) {
          partial = { start: index, word: text.slice(index + 1), quoted: true };
          break;
        }
        let value = text.slice(index + 1, end);
        try {
          value = JSON.parse(text.slice(index, end + 1));
        } catch (error) {
          // A malformed escape: the raw text is near enough for a suggestion.
        }
        if (top && top.kind === "object" && top.expectKey) top.key = value;
        else if (top && top.kind === "object" && top.key === "class_name") top.className = value;
        index = end + 1;
        continue;
      }
      if (char === "{" || char === "[") {
        const segment = !top ? null : top.kind === "object" ? top.key : String(top.index);
        stack.push({ kind: char === "{" ? "object" : "array", segment, key: null, index: 0, expectKey: true });
      } else if (char === "}" || char === "]") {
        stack.pop();
      } else if (char === ":" && top) {
        top.expectKey = false;
      } else if (char === "," && top) {
        top.expectKey = true;
        top.index += 1;
      }
      index += 1;
    }
    if (!partial) {
      const word = /[A-Za-z0-9_.+-]*$/.exec(text)[0];
      partial = { start: text.length - word.length, word, quoted: false };
    }
    return { stack, partial };
  }

  // A schema's alternatives with references followed and anyOf/oneOf/allOf flattened; with
  // `className`, only the alternatives that allow that class_name (a layer's, an optimizer's).
  function alternatives(root, schema, className, depth = 0) {
    if (!schema || typeof schema !== "object" || depth > 20) return [];
    if (schema.$ref) {
      const target = schema.$ref.replace(/^#\//, "").split("/").reduce((node, key) => node && node[key], root);
      return alternatives(root, target, className, depth + 1);
    }
    const parts = schema.anyOf || schema.oneOf || schema.allOf;
    if (parts) return parts.flatMap((part) => alternatives(root, part, className, depth + 1));
    const named = schema.properties && schema.properties.class_name;
    if (className && named && (named.const !== undefined || named.enum)) {
      const allowed = named.enum || [named.const];
      if (!allowed.includes(className)) return [];
    }
    return [schema];
  }

  function childSchemas(schema, segment) {
    if (schema.properties && schema.properties[segment]) return [schema.properties[segment]];
    for (const [pattern, child] of Object.entries(schema.patternProperties || {})) {
      if (new RegExp(pattern).test(segment)) return [child];
    }
    if (schema.items && /^\d+$/.test(segment)) return [schema.items];
    return typeof schema.additionalProperties === "object" ? [schema.additionalProperties] : [];
  }

  // The schemas that may hold the value at the end of `segments`, inside `stack`'s containers.
  function schemasAt(root, segments, stack) {
    let options = [root.components.schemas.JobRequest];
    segments.forEach((segment, depth) => {
      const className = stack[depth] && stack[depth].className;
      options = options.flatMap((schema) => alternatives(root, schema, className))
        .flatMap((schema) => childSchemas(schema, segment));
    });
    const last = stack[segments.length];
    return options.flatMap((schema) => alternatives(root, schema, last && last.className));
  }

  function escapeSegment(segment) {
    return segment.replace(/~/g, "~0").replace(/\//g, "~1");
  }

  // Suggestions for the cursor: property names where a key goes, enum values where a value
  // goes, each with the text that replaces the word being typed.
  function suggest(root, text) {
    const { stack, partial } = cursorContext(text);
    const top = stack[stack.length - 1];
    if (!top) return { pointer: "", choices: [], partial };
    const segments = stack.slice(1).map((container) => container.segment);
    const pointer = segments.map((segment) => "/" + escapeSegment(segment)).join("");
    const keyPlace = top.kind === "object" && top.expectKey;
    if (top.kind === "object" && !keyPlace) segments.push(top.key);
    if (top.kind === "array") segments.push(String(top.index));
    const schemas = schemasAt(root, segments, stack);
    const seen = new Map();
    for (const schema of schemas) {
      if (keyPlace) {
        for (const name of Object.keys(schema.properties || {})) seen.set(name, `"${name}": `);
        continue;
      }
      const values = schema.enum || (schema.const !== undefined ? [schema.const] : []);
      const types = [].concat(schema.type || []);
      if (types.includes("boolean")) values.push(true, false);
      for (const value of values) seen.set(JSON.stringify(value), JSON.stringify(value));
    }
    const word = partial.word.toLowerCase();
    const choices = [...seen.entries()].filter(([label]) => label.replace(/^"/, "").toLowerCase().startsWith(word));
    const where = keyPlace ? `a property of ${pointer || "the request"}`
      : `the value at ${segments.map((segment) => "/" + escapeSegment(segment)).join("")}`;
    return { where, choices, partial };
  }

  // What :validate answers for a request that can run: the model's layers and the estimate
  // of what a training step costs (byte counts read as sizes).
  function validationSummary(summary) {
    const facts = element("dl", null, { class: "facts", id: "validate-result" });
    const bytes = (name, value) => (/bytes$|^memory$|^data$/.test(name) ? formatBytes(value) : formatNumber(value));
    const rows = [["Valid", "yes: this request can run"],
      ["Parameters", `${summary.total_params} (${summary.trainable_params} trainable)`]];
    for (const [name, value] of Object.entries(summary.cost || {})) {
      rows.push([name.replace(/_/g, " "), value !== null && typeof value === "object"
        ? Object.entries(value).map(([part, amount]) => `${part} ${bytes(name, amount)}`).join(", ")
        : bytes(name, value)]);
    }
    for (const [name, value] of rows) facts.append(element("dt", name), element("dd", value));
    const layers = table(["Layer", "Class", "Output shape", "Parameters"], (summary.layers || []).map((layer) =>
      [layer.name, layer.class_name, JSON.stringify(layer.output_shape), formatNumber(layer.params)]));
    const box = element("div");
    box.append(facts, layers);
    return box;
  }

  function startRequestEditor() {
    const spec = document.getElementById("job-spec");
    const list = document.getElementById("spec-suggestions");
    const hint = document.getElementById("spec-hint");
    const picker = document.getElementById("job-dataset");
    const result = document.getElementById("submit-result");
    const datasets = new Map();
    let schema = null;

    // Loaded on first use: the JobRequest schema is part of the whole API's document.
    async function loadSchema() {
      if (schema === null) schema = (await api("GET", "/openapi.json")).data;
      return schema;
    }

    function editRequest(change) {
      let request;
      try {
        request = JSON.parse(spec.value);
      } catch (error) {
        result.replaceChildren(element("p", `Fix the request's JSON first: ${error.message}`, { class: "error", role: "alert" }));
        return false;
      }
      spec.value = formatJson(change(request));
      return true;
    }

    function addDataset(dataset) {
      if (dataset.status && dataset.status !== "ready") return;
      datasets.set(dataset.id, dataset);
      if (picker.querySelector(`option[value="${dataset.id}"]`)) return;
      const label = `${(dataset.source && dataset.source.filename) || dataset.id.slice(0, 8)} · ${dataset.rows} rows · ${dataset.id.slice(0, 8)}`;
      picker.append(element("option", label, { value: dataset.id }));
    }

    // A dataset chosen (or just uploaded): the request is fitted to it.
    function chooseDataset(dataset) {
      addDataset(dataset);
      if (!datasets.has(dataset.id)) return;
      picker.value = dataset.id;
      if (!editRequest((request) => fitRequestToDataset(request, dataset))) {
        spec.value = spec.value.replace(/<dataset id>|"dataset": "[0-9a-f]{32}"/,
          (match) => match.startsWith("<") ? dataset.id : `"dataset": "${dataset.id}"`);
      }
    }

    async function showSuggestions() {
      const root = await loadSchema();
      const text = spec.value.slice(0, spec.selectionStart);
      const { where, choices, partial } = suggest(root, text);
      list.replaceChildren();
      hint.textContent = choices.length ? `Suggestions for ${where}:` : "";
      for (const [label, insert] of choices.slice(0, 40)) {
        const button = element("button", label, { type: "button", class: "suggestion" });
        button.addEventListener("click", () => {
          const after = spec.value.slice(spec.selectionStart);
          // Inside a string, the rest of the word and its closing quote go too.
          const rest = partial.quoted ? /^[^"\n]*"?/.exec(after)[0].length : /^[A-Za-z0-9_.+-]*/.exec(after)[0].length;
          spec.value = text.slice(0, partial.start) + insert + after.slice(rest);
          const cursor = partial.start + insert.length;
          spec.focus();
          spec.setSelectionRange(cursor, cursor);
          showSuggestions().catch(console.warn);
        });
        const item = element("li");
        item.append(button);
        list.append(item);
      }
    }

    for (const kind of ["input", "click", "keyup"]) {
      spec.addEventListener(kind, () => showSuggestions().catch(console.warn));
    }

    picker.addEventListener("change", () => {
      if (datasets.has(picker.value)) chooseDataset(datasets.get(picker.value));
    });

    document.getElementById("model-file").addEventListener("change", (event) => {
      const file = event.target.files[0];
      if (!file) return;
      const reader = new FileReader();
      reader.addEventListener("load", () => {
        let model;
        try {
          model = JSON.parse(reader.result);
        } catch (error) {
          result.replaceChildren(element("p", `${file.name} is not JSON: ${error.message}`, { class: "error", role: "alert" }));
          return;
        }
        if (editRequest((request) => ({ ...request, model }))) {
          result.replaceChildren(element("p", `The model of ${file.name} is the request's model.`, { id: "model-loaded" }));
        }
      });
      reader.readAsText(file);
    });

    document.getElementById("validate-button").addEventListener("click", async () => {
      result.textContent = "Validating…";
      try {
        const { data } = await api("POST", "/v1/jobs:validate", spec.value);
        result.replaceChildren(validationSummary(data));
      } catch (error) {
        showProblem(result, error);
      }
    });

    document.getElementById("submit-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const text = spec.value;
      try {
        JSON.parse(text);
      } catch (error) {
        result.replaceChildren(element("p", `The request is not valid JSON: ${error.message}`, { class: "error", role: "alert" }));
        return;
      }
      result.textContent = "Submitting…";
      try {
        const { data } = await api("POST", "/v1/jobs", text);
        window.location.assign(`/jobs/${data.id}`);
      } catch (error) {
        showProblem(result, error);
      }
    });

    api("GET", "/v1/datasets?limit=100")
      .then(({ data }) => data.items.forEach(addDataset), console.warn);
    return { chooseDataset };
  }

  // The job page -------------------------------------------------------------------------

  // A uPlot chart of some series against the epoch; rebuilt when the set of series changes.
  class Curves {
    constructor(container, title) {
      this.container = container;
      this.title = title;
      this.plot = null;
      this.names = "";
    }

    update(epochs, history, names) {
      if (!names.length) return;
      const data = [epochs, ...names.map((name) => history[name])];
      if (this.plot && this.names === names.join()) {
        this.plot.setData(data);
        return;
      }
      if (this.plot) this.plot.destroy();
      this.names = names.join();
      // Each series its own colour; a validation curve is also dashed.
      this.plot = new uPlot({
        title: this.title,
        width: Math.max(300, this.container.clientWidth),
        height: 260,
        scales: { x: { time: false } },
        axes: [{ label: "epoch", incrs: [1, 2, 5, 10, 20, 50, 100] }, {}],
        series: [
          { label: "epoch" },
          ...names.map((name, index) => ({
            label: name,
            stroke: PALETTE[index % PALETTE.length],
            width: 2,
            dash: /(^|\s)val_/.test(name) ? [6, 4] : undefined,
            spanGaps: true,
            points: { show: true, size: 6 },
          })),
        ],
      }, data, this.container);
    }
  }

  function startJobPage(jobId) {
    const charts = document.getElementById("charts");
    const lossCurves = new Curves(document.getElementById("loss-chart"), "Loss");
    const metricCurves = new Curves(document.getElementById("metric-chart"), "Metrics");
    const cancelButton = document.getElementById("cancel-button");
    const logDetails = document.getElementById("log-details");
    let stream = null;
    let soon = null;

    function refreshSoon() {
      if (soon === null) {
        soon = setTimeout(() => {
          soon = null;
          refreshJob().catch(console.warn);
        }, 100);
      }
    }

    // The session cookie authorizes the stream (EventSource cannot send an Authorization
    // header). Polling goes on, slower while the stream is open, and is the fallback when the
    // stream is refused (429: the server's stream cap) or lost.
    function listen() {
      if (!window.EventSource) return;
      stream = new EventSource(`/v1/jobs/${jobId}/events`);
      for (const kind of EVENT_KINDS) stream.addEventListener(kind, refreshSoon);
    }

    function streaming() {
      return stream !== null && stream.readyState === EventSource.OPEN;
    }

    function showJob(job) {
      statusBadge(document.getElementById("job-status"), job.status);
      document.getElementById("job-title").replaceChildren(
        element("span", job.name ? `${job.name} ` : "Job "), element("code", job.id));
      document.getElementById("job-progress").value = job.progress.fraction || 0;
      document.getElementById("job-epoch").textContent = progressText(job);
      document.getElementById("job-attempt").textContent = job.attempt;
      document.getElementById("job-device").textContent = formatDevice(job);
      const best = job.metrics && job.metrics.best;
      document.getElementById("job-best").textContent = best
        ? `${best.monitor} ${formatNumber(best.value)} at version ${best.version}` : "–";
      const error = document.getElementById("job-error");
      const message = job.error ? `${job.error.reason}: ${job.error.message}`
        : job.queue && job.queue.message ? job.queue.message : "";
      error.textContent = message;
      error.hidden = !message;
      cancelButton.disabled = !(job.status === "queued" || job.status === "running");
      // A finished job has nothing to cancel: no button, rather than a dead one.
      cancelButton.hidden = TERMINAL.has(job.status);
      if (TERMINAL.has(job.status)) document.getElementById("cancel-result").textContent = "";
      showWorkflow(job);
      showCheckpoints(job);
    }

    // Tags, queue place, stop reason, clone and warm-start sources (each shown where the job
    // has one), and how long it is kept.
    function showWorkflow(job) {
      const warm = job.warm_start;
      const facts = {
        "job-stop": job.stop && formatStop(job.stop),
        "job-queue": job.status === "queued" && formatQueue(job.queue),
        "job-tags": job.tags && Object.keys(job.tags).length && formatTags(job.tags),
        "job-cloned-from": job.cloned_from && element("a", job.cloned_from, { href: `/jobs/${job.cloned_from}` }),
        "job-warm-start": warm && `job ${warm.job}, version ${warm.version}: ` + (warm.loaded
          ? `loaded ${warm.loaded.join(", ") || "no layer"}` +
            (warm.skipped && warm.skipped.length ? `; skipped ${warm.skipped.join(", ")}` : "")
          : "layers load when training starts"),
        "job-sweep": job.sweep && element("a", `trial ${job.trial} of sweep ${job.sweep.slice(0, 8)}`, { href: `/sweeps/${job.sweep}` }),
      };
      for (const [id, value] of Object.entries(facts)) {
        const fact = document.getElementById(id);
        fact.replaceChildren(value || "");
        fact.parentElement.hidden = !value;
      }
      const retention = job.retention || {};
      document.getElementById("job-retention").textContent = retention.pinned ? "pinned: kept until unpinned"
        : retention.expires_at ? `until ${formatTime(retention.expires_at)}` : "kept (no expiry)";
      document.getElementById("pin-button").hidden = !!retention.pinned;
      document.getElementById("unpin-button").hidden = !retention.pinned;
    }

    function showCheckpoints(job) {
      const body = document.querySelector("#checkpoints tbody");
      body.replaceChildren();
      for (const checkpoint of [...job.checkpoints].reverse()) {
        const row = element("tr");
        const link = element("a", `version ${checkpoint.version} (.keras)`, {
          href: `/v1/models/${job.id}/download?format=keras&version=${checkpoint.version}`,
          download: `${job.name || job.id}-v${checkpoint.version}.keras`,
        });
        const cell = element("td");
        cell.append(link);
        // A stop (cancel, shutdown, time limit) saves the epoch it cut short, marked partial.
        const version = checkpoint.partial ? `${checkpoint.version} (partial epoch)` : checkpoint.version;
        row.append(element("td", version), element("td", formatMetrics(checkpoint.metrics)),
          element("td", formatTime(checkpoint.created_at)), cell);
        body.append(row);
      }
      const final = document.getElementById("final-model");
      final.replaceChildren();
      if (job.final) {
        final.append(element("a", `Download the final model (version ${job.final.version}, .keras)`, {
          href: `/v1/models/${job.id}/download?format=keras`,
          download: `${job.name || job.id}.keras`,
        }));
      }
    }

    function showCurves(job, metrics) {
      const { partial, names, epochs, history } = completedEpochs(job, metrics);
      const losses = names.filter((name) => name.endsWith("loss"));
      const others = names.filter((name) => !name.endsWith("loss") && name !== "learning_rate");
      lossCurves.update(epochs, history, losses);
      metricCurves.update(epochs, history, others);
      charts.dataset.points = String(epochs.length);
      const last = epochs.length - 1;
      const cut = partial.size ? `. Not drawn: epoch ${[...partial].join(", ")}, cut short by a stop.` : "";
      document.getElementById("chart-summary").textContent = (last < 0 ? "No completed epoch yet."
        : `Epoch ${epochs[last]}: ` +
          formatMetrics(Object.fromEntries(names.map((name) => [name, history[name][last]])))) + cut;
    }

    async function refreshLog() {
      if (!logDetails.open) return;
      const { data } = await api("GET", `/v1/jobs/${jobId}/logs?tail=200`);
      document.getElementById("job-log").textContent = data.lines.join("\n");
    }

    async function refreshJob() {
      const [job, metrics] = await Promise.all([
        api("GET", `/v1/jobs/${jobId}`),
        api("GET", `/v1/jobs/${jobId}/metrics`),
      ]);
      showJob(job.data);
      showCurves(job.data, metrics.data);
      await refreshLog();
      if (TERMINAL.has(job.data.status) && stream !== null) {
        // The server ends a finished job's stream; without this the browser would reconnect.
        stream.close();
        stream = null;
      }
      return !TERMINAL.has(job.data.status);
    }

    cancelButton.addEventListener("click", async () => {
      const result = document.getElementById("cancel-result");
      cancelButton.disabled = true;
      try {
        const { data } = await api("POST", `/v1/jobs/${jobId}:cancel`);
        showJob(data);
        if (!TERMINAL.has(data.status)) result.textContent = "Cancel requested; the job stops after its current batch.";
      } catch (error) {
        showProblem(result, error);
      }
    });

    logDetails.addEventListener("toggle", () => refreshLog().catch(console.warn));

    for (const [id, action] of [["pin-button", "pin"], ["unpin-button", "unpin"]]) {
      document.getElementById(id).addEventListener("click", async () => {
        try {
          const { data } = await api("POST", `/v1/jobs/${jobId}:${action}`);
          showWorkflow(data);
        } catch (error) {
          showProblem(document.getElementById("cancel-result"), error);
        }
      });
    }

    document.getElementById("clone-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const result = document.getElementById("clone-result");
      const text = document.getElementById("clone-patch").value;
      try {
        JSON.parse(text);
      } catch (error) {
        result.replaceChildren(element("p", `The changes are not valid JSON: ${error.message}`, { class: "error", role: "alert" }));
        return;
      }
      result.textContent = "Cloning…";
      try {
        const { data } = await api("POST", `/v1/jobs/${jobId}:clone`, text);
        window.location.assign(`/jobs/${data.id}`);
      } catch (error) {
        showProblem(result, error);
      }
    });

    document.getElementById("predict-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const result = document.getElementById("predict-result");
      const text = document.getElementById("predict-instances").value;
      try {
        JSON.parse(text);
      } catch (error) {
        result.replaceChildren(element("p", `The instances are not valid JSON: ${error.message}`, { class: "error", role: "alert" }));
        return;
      }
      const version = document.getElementById("predict-version").value.trim();
      const model = version ? `/v1/models/${jobId}/versions/${version}` : `/v1/models/${jobId}`;
      result.textContent = "Predicting…";
      try {
        // A model trained on named classes answers with names and scores (:classify).
        const { data: metadata } = await api("GET", `${model}/metadata`);
        const classes = metadata.labels && metadata.labels.classes;
        const method = classes && classes.length ? "classify" : "predict";
        const { data, response } = await api("POST", `${model}:${method}`, `{"instances": ${text}}`);
        const raw = element("details");
        raw.append(element("summary", "Raw JSON"),
          element("pre", formatRows(method === "classify" ? data.result : data.predictions), { id: "predictions" }));
        result.replaceChildren(
          element("p", `Served by version ${response.headers.get("X-Model-Version") || "?"}`),
          method === "classify" ? classesTable(data.result) : predictionsTable(data.predictions), raw);
      } catch (error) {
        showProblem(result, error);
      }
    });

    listen();
    poll(refreshJob, () => (streaming() ? STREAMING_MS : LIVE_MS));
  }

  // The datasets page --------------------------------------------------------------------

  function formatArrays(arrays) {
    return Object.entries(arrays || {})
      .map(([name, array]) => `${name} [${array.shape.join(", ")}] ${array.dtype}`).join("; ");
  }

  function formatClasses(classes) {
    return Object.entries(classes || {})
      .map(([name, names]) => `${name}: ${names.length} (${names.slice(0, 5).join(", ")}${names.length > 5 ? ", …" : ""})`)
      .join("; ") || "–";
  }

  function datasetTitle(dataset) {
    return (dataset.source && dataset.source.filename) || dataset.id.slice(0, 8);
  }

  // One dataset in full: each array's statistics, the class names, the downloads.
  function showDatasetDetails(dataset, downloads) {
    const section = document.getElementById("dataset-details");
    section.hidden = false;
    document.getElementById("dataset-details-title").textContent = `Dataset ${datasetTitle(dataset)}`;
    const body = document.getElementById("dataset-details-body");
    body.replaceChildren(element("p", dataset.id, { class: "muted small" }));
    if (dataset.error) body.append(element("p", `${dataset.error.member ? dataset.error.member + ": " : ""}${dataset.error.message}`, { class: "error" }));
    const stats = Object.entries(dataset.arrays || {}).map(([name, array]) => {
      const s = array.stats || {};
      return [name, `[${array.shape.join(", ")}]`, array.dtype, formatNumber(s.min), formatNumber(s.max),
        `${s.nan || 0} / ${s.inf || 0}`, s.labels ? s.labels.slice(0, 20).map(formatNumber).join(", ") : "–"];
    });
    body.append(table(["Array", "Shape", "Type", "Min", "Max", "NaN / inf", "Distinct values"], stats,
      { id: "dataset-stats" }));
    for (const [name, names] of Object.entries(dataset.classes || {})) {
      body.append(element("h3", `Classes of ${name}`));
      body.append(table(["Id", "Name"], names.map((label, id) => [String(id), label]), { class: "dataset-classes" }));
    }
    if (downloads) {
      const links = element("p", "Download: ");
      for (const format of ["npz", "npy", "csv"]) {
        links.append(element("a", format, { href: `/v1/datasets/${dataset.id}/download?format=${format}`, download: "" }), " ");
      }
      body.append(links);
    }
  }

  function startDatasetsPage() {
    const body = document.querySelector("#datasets tbody");
    const updated = document.getElementById("datasets-updated");
    let downloads = null;
    let processing = false;

    // Downloads exist where the API describes the download route.
    async function canDownload() {
      if (downloads === null) {
        const { data } = await api("GET", "/openapi.json");
        downloads = Object.keys(data.paths).some((path) => path.startsWith("/v1/datasets/{") && path.endsWith("/download"));
      }
      return downloads;
    }

    async function refreshDatasets() {
      const { data } = await api("GET", "/v1/datasets?limit=100");
      const download = await canDownload();
      body.replaceChildren(...data.items.map((dataset) => {
        const row = element("tr", null, { "data-dataset-id": dataset.id });
        const name = element("td");
        const details = element("button", datasetTitle(dataset), { type: "button", class: "link" });
        details.addEventListener("click", () => showDatasetDetails(dataset, download));
        name.append(details, element("div", dataset.id, { class: "muted small" }));
        const status = element("td");
        const badge = element("span");
        statusBadge(badge, dataset.status || "ready");
        status.append(badge);
        const remove = element("button", "Delete", { type: "button", class: "small-button danger" });
        remove.addEventListener("click", async () => {
          if (!window.confirm(`Delete dataset ${datasetTitle(dataset)}?`)) return;
          try {
            await api("DELETE", `/v1/datasets/${dataset.id}`);
            await refreshDatasets();
          } catch (error) {
            showProblem(document.getElementById("datasets-updated"), error);
          }
        });
        const actions = element("td");
        actions.append(remove);
        row.append(name, status, element("td", formatNumber(dataset.rows)), element("td", formatArrays(dataset.arrays)),
          element("td", formatClasses(dataset.classes)), element("td", dataset.bytes ? formatBytes(dataset.bytes) : "–"),
          element("td", formatTime(dataset.created_at)), actions);
        return row;
      }));
      if (!data.items.length) {
        const row = element("tr");
        row.append(element("td", "No datasets yet: upload one below.", { colspan: "8" }));
        body.append(row);
      }
      updated.textContent = `${data.items.length} dataset(s), updated ${new Date().toLocaleTimeString()}`;
      processing = data.items.some((dataset) => dataset.status === "processing");
    }

    startUploadForm(() => refreshDatasets().catch(console.warn));
    // Processing datasets (archives, imports) turn ready or failed soon: watched closely.
    poll(refreshDatasets, () => (processing ? LIST_MS : 5 * LIST_MS));
  }

  // The compare page ---------------------------------------------------------------------

  function startComparePage() {
    const ids = (new URLSearchParams(window.location.search).get("jobs") || "")
      .split(",").filter((id) => ID.test(id)).slice(0, PALETTE.length);
    const picker = document.getElementById("compare-metric");
    const curves = new Curves(document.getElementById("compare-chart"), "Compared jobs");
    let runs = [];

    function draw() {
      const metric = picker.value;
      const shown = runs.filter((run) => run.history[metric]);
      const { epochs, columns } = alignSeries(shown.map((run) => ({ epochs: run.epochs, values: run.history[metric] })));
      const names = shown.map((run, index) => `${index + 1}. ${run.job.name || run.job.id.slice(0, 8)} ${metric}`);
      curves.update(epochs, Object.fromEntries(names.map((name, index) => [name, columns[index]])), names);
      document.getElementById("compare-charts").dataset.series = String(names.length);
      document.querySelector("#compare-jobs tbody").replaceChildren(...runs.map((run) => {
        const values = (run.history[metric] || []).filter((value) => value !== null);
        const lower = !/acc|auc|precision|recall/.test(metric);
        const best = values.length ? (lower ? Math.min(...values) : Math.max(...values)) : null;
        const row = element("tr", null, { "data-job-id": run.job.id });
        const link = element("td");
        link.append(element("a", run.job.name || run.job.id, { href: `/jobs/${run.job.id}` }));
        row.append(link, element("td", run.job.status), element("td", formatNumber(values[values.length - 1])),
          element("td", formatNumber(best)));
        return row;
      }));
    }

    async function refresh() {
      try {
        runs = await Promise.all(ids.map(async (id) => {
          const [job, metrics] = await Promise.all([api("GET", `/v1/jobs/${id}`), api("GET", `/v1/jobs/${id}/metrics`)]);
          return { job: job.data, ...completedEpochs(job.data, metrics.data) };
        }));
      } catch (error) {
        showProblem(document.getElementById("compare-error"), error);
        document.getElementById("compare-error").hidden = false;
        return false;
      }
      const names = [...new Set(runs.flatMap((run) => run.names))].filter((name) => name !== "learning_rate").sort();
      if (names.join() !== [...picker.options].map((option) => option.value).join()) {
        const chosen = picker.value || (names.includes("val_loss") ? "val_loss" : names.includes("loss") ? "loss" : names[0]);
        picker.replaceChildren(...names.map((name) => element("option", name, { value: name })));
        if (chosen) picker.value = chosen;
      }
      draw();
      return runs.some((run) => !TERMINAL.has(run.job.status));
    }

    picker.addEventListener("change", draw);
    if (!ids.length) {
      const error = document.getElementById("compare-error");
      error.replaceChildren(element("p", "Choose jobs to compare in the jobs list.", { class: "error", role: "alert" }));
      error.hidden = false;
      return;
    }
    poll(refresh, () => LIVE_MS * 2);
  }

  // The sweeps pages ---------------------------------------------------------------------

  function svg(tag, attributes, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  // A parameter's axis: where a value sits from 0 to 1, and the labels of its ends. A choice
  // spreads its options evenly; a numeric range spans the space (log where it is log).
  function axisFor(dimension, values) {
    if (dimension && Array.isArray(dimension.choice)) {
      const options = dimension.choice.map((option) => JSON.stringify(option));
      const last = Math.max(1, options.length - 1);
      return { place: (value) => options.indexOf(JSON.stringify(value)) / last, labels: options };
    }
    const range = (dimension && (dimension.float || dimension.int)) ||
      [Math.min(...values), Math.max(...values)];
    const log = dimension && dimension.log && range[0] > 0;
    const scale = (value) => (log ? Math.log(value) : value);
    const [low, high] = [scale(range[0]), scale(range[1])];
    return {
      place: (value) => (high === low ? 0.5 : (scale(value) - low) / (high - low)),
      labels: [formatNumber(range[0]), formatNumber(range[1])],
    };
  }

  // The objective's axis, better at the top whichever way the sweep optimizes; its labels
  // are the worst and the best values.
  function objectiveAxis(values, mode) {
    const [low, high] = [Math.min(...values), Math.max(...values)];
    const better = (value) => (mode === "min" ? high - value : value - low);
    return {
      place: (value) => (high === low ? 0.5 : better(value) / (high - low)),
      labels: mode === "min" ? [formatNumber(high), formatNumber(low)] : [formatNumber(low), formatNumber(high)],
    };
  }

  function formatParam(value) {
    return typeof value === "number" ? formatNumber(value) : JSON.stringify(value);
  }

  // A space pointer's last segment ("learning_rate" for /compile/optimizer/config/learning_rate)
  // where that names it alone, else the whole pointer.
  function shortNames(pointers) {
    const last = pointers.map((pointer) => pointer.split("/").pop());
    return pointers.map((pointer, index) => (last.indexOf(last[index]) === last.lastIndexOf(last[index]) ? last[index] : pointer));
  }

  function trialColour(trial, sweep) {
    if (trial.number === sweep.best_trial) return PALETTE[1];
    return trial.state === "pruned" ? "#9e9e9e" : PALETTE[0];
  }

  // One scatter per parameter: the parameter's value across, the objective up.
  function drawScatters(container, sweep, trials, objective) {
    container.replaceChildren();
    const [width, height, pad] = [280, 200, 48];
    const labels = shortNames(Object.keys(sweep.space));
    for (const [index, name] of Object.keys(sweep.space).entries()) {
      const points = trials.filter((trial) => trial.params && trial.params[name] !== undefined);
      if (!points.length) continue;
      const across = axisFor(sweep.space[name], points.map((trial) => trial.params[name]));
      const plot = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
        "aria-label": `${sweep.objective.metric} against ${name}`, class: "param-scatter" });
      plot.append(svg("text", { x: width / 2, y: 14, "text-anchor": "middle" }, labels[index]),
        svg("line", { x1: pad, y1: height - pad, x2: width - 8, y2: height - pad, stroke: "#767676" }),
        svg("line", { x1: pad, y1: 22, x2: pad, y2: height - pad, stroke: "#767676" }),
        svg("text", { x: pad, y: height - pad + 16 }, across.labels[0]),
        svg("text", { x: width - 8, y: height - pad + 16, "text-anchor": "end" }, across.labels[across.labels.length - 1]),
        svg("text", { x: 4, y: 30 }, objective.labels[1]),
        svg("text", { x: 4, y: height - pad }, objective.labels[0]));
      for (const trial of points) {
        const x = pad + across.place(trial.params[name]) * (width - pad - 16);
        const y = height - pad - objective.place(trial.objective) * (height - pad - 30);
        const dot = svg("circle", { cx: x, cy: y, r: 5, fill: trialColour(trial, sweep), class: "trial-point" });
        dot.append(svg("title", {}, `trial ${trial.number}: ${name} ${formatParam(trial.params[name])}, ` +
          `${sweep.objective.metric} ${formatNumber(trial.objective)}`));
        plot.append(dot);
      }
      container.append(plot);
    }
  }

  // Parallel coordinates: one vertical axis per parameter and one for the objective; each
  // trial a line through its values.
  function drawParallel(container, sweep, trials, objective) {
    const names = Object.keys(sweep.space);
    const axes = names.map((name) => axisFor(sweep.space[name],
      trials.map((trial) => trial.params && trial.params[name]).filter((value) => value !== undefined)));
    const labels = [...shortNames(names), sweep.objective.metric];
    const gap = 160;
    const [width, height, top, bottom] = [gap * names.length + 120, 260, 30, 30];
    const plot = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": "Parallel coordinates of the trials' parameters and objective", id: "parallel-plot" });
    const y = (fraction) => height - bottom - fraction * (height - top - bottom);
    labels.forEach((name, index) => {
      const x = 60 + index * gap;
      const axis = index < names.length ? axes[index] : objective;
      plot.append(svg("line", { x1: x, y1: y(0), x2: x, y2: y(1), stroke: "#4d4d4d" }),
        svg("text", { x, y: 16, "text-anchor": "middle" }, name),
        svg("text", { x: x + 4, y: y(0) + 14 }, axis.labels[0]),
        svg("text", { x: x + 4, y: y(1) - 4 }, axis.labels[axis.labels.length - 1]));
    });
    for (const trial of trials) {
      if (!trial.params || names.some((name) => trial.params[name] === undefined)) continue;
      const points = names.map((name, index) => `${60 + index * gap},${y(axes[index].place(trial.params[name]))}`);
      points.push(`${60 + names.length * gap},${y(objective.place(trial.objective))}`);
      const line = svg("polyline", { points: points.join(" "), fill: "none", stroke: trialColour(trial, sweep),
        "stroke-width": trial.number === sweep.best_trial ? 3 : 1.5, "stroke-opacity": 0.8, class: "trial-line" });
      line.append(svg("title", {}, `trial ${trial.number}`));
      plot.append(line);
    }
    container.replaceChildren(plot);
  }

  function startSweepsPage() {
    const body = document.querySelector("#sweeps tbody");
    const updated = document.getElementById("sweeps-updated");

    async function refreshSweeps() {
      let data;
      try {
        ({ data } = await api("GET", "/v1/sweeps?limit=100"));
      } catch (error) {
        if (error.status !== 404) throw error;
        updated.textContent = "This server runs no sweeps.";
        return false;
      }
      body.replaceChildren(...data.items.map((sweep) => {
        const row = element("tr", null, { "data-sweep-id": sweep.id });
        const first = element("td");
        first.append(element("a", sweep.name || sweep.id.slice(0, 8), { href: `/sweeps/${sweep.id}` }),
          element("div", sweep.id, { class: "muted small" }));
        const status = element("td");
        const badge = element("span");
        statusBadge(badge, sweep.status);
        status.append(badge);
        row.append(first, status, element("td", `${sweep.trials.length} of ${sweep.max_trials}`),
          element("td", `${sweep.objective.metric} (${sweep.objective.mode})`),
          element("td", formatNumber(sweep.best_objective)), element("td", formatTime(sweep.created_at)));
        return row;
      }));
      if (!data.items.length) {
        const row = element("tr");
        row.append(element("td", "No sweeps yet: submit one with POST /v1/sweeps or fitserve sweeps submit.", { colspan: "6" }));
        body.append(row);
      }
      updated.textContent = `${data.items.length} sweep(s), updated ${new Date().toLocaleTimeString()}`;
    }

    poll(refreshSweeps, () => LIST_MS);
  }

  function startSweepPage(sweepId) {
    const curves = new Curves(document.getElementById("trial-chart"), "Trials");
    // A finished trial's history no longer changes: fetched once.
    const finished = new Map();

    async function trialHistory(trial) {
      if (finished.has(trial.job)) return finished.get(trial.job);
      const [job, metrics] = await Promise.all([
        api("GET", `/v1/jobs/${trial.job}`), api("GET", `/v1/jobs/${trial.job}/metrics`)]);
      const run = completedEpochs(job.data, metrics.data);
      if (TERMINAL.has(job.data.status)) finished.set(trial.job, run);
      return run;
    }

    function showFacts(sweep) {
      statusBadge(document.getElementById("sweep-status"), sweep.status);
      document.getElementById("sweep-title").replaceChildren(
        element("span", sweep.name ? `${sweep.name} ` : "Sweep "), element("code", sweep.id));
      document.getElementById("sweep-objective").textContent = `${sweep.objective.metric} (${sweep.objective.mode})`;
      document.getElementById("sweep-search").textContent = `${sweep.sampler} sampler, ${sweep.pruner} pruner, ` +
        `${sweep.trials.length} of ${sweep.max_trials} trials, at most ${sweep.max_concurrent} at once`;
      const best = document.getElementById("sweep-best");
      best.replaceChildren(sweep.best_job ? element("a", `trial ${sweep.best_trial}: ${formatNumber(sweep.best_objective)}`,
        { href: `/jobs/${sweep.best_job}` }) : "–");
      document.querySelector("#trials tbody").replaceChildren(...sweep.trials.map((trial) => {
        const row = element("tr", null, { "data-trial": String(trial.number) });
        const job = element("td");
        if (trial.job) job.append(element("a", trial.job.slice(0, 8), { href: `/jobs/${trial.job}` }));
        const params = Object.entries(trial.params || {}).map(([name, value]) => `${name} = ${formatParam(value)}`).join(", ");
        row.append(element("td", trial.number === sweep.best_trial ? `${trial.number} (best)` : trial.number),
          element("td", trial.error ? `${trial.state}: ${trial.error}` : trial.state), element("td", params || "–"),
          element("td", formatNumber(trial.objective)), element("td", trial.epochs), job);
        return row;
      }));
    }

    async function refreshSweep() {
      const { data: sweep } = await api("GET", `/v1/sweeps/${sweepId}`);
      showFacts(sweep);
      const metric = sweep.objective.metric;
      const withJobs = sweep.trials.filter((trial) => trial.job);
      const runs = await Promise.all(withJobs.map(trialHistory));
      const shown = withJobs.map((trial, index) => ({ trial, run: runs[index] }))
        .filter(({ run }) => run.history[metric]);
      const { epochs, columns } = alignSeries(shown.map(({ run }) => ({ epochs: run.epochs, values: run.history[metric] })));
      const names = shown.map(({ trial }) => `trial ${trial.number} ${metric}`);
      curves.update(epochs, Object.fromEntries(names.map((name, index) => [name, columns[index]])), names);
      document.getElementById("trial-curves").dataset.series = String(names.length);
      const scored = sweep.trials.filter((trial) => typeof trial.objective === "number");
      if (scored.length) {
        const objective = objectiveAxis(scored.map((trial) => trial.objective), sweep.objective.mode);
        drawScatters(document.getElementById("param-scatter"), sweep, scored, objective);
        drawParallel(document.getElementById("parallel"), sweep, scored, objective);
      }
      return !TERMINAL.has(sweep.status);
    }

    poll(refreshSweep, () => LIST_MS);
  }

  document.addEventListener("DOMContentLoaded", () => {
    if (document.querySelector('[data-page="jobs"]')) startJobsPage();
    const job = document.querySelector('[data-page="job"]');
    if (job) startJobPage(job.dataset.jobId);
    if (document.querySelector('[data-page="datasets"]')) startDatasetsPage();
    if (document.querySelector('[data-page="compare"]')) startComparePage();
    if (document.querySelector('[data-page="sweeps"]')) startSweepsPage();
    const sweep = document.querySelector('[data-page="sweep"]');
    if (sweep) startSweepPage(sweep.dataset.sweepId);
  });
})();
