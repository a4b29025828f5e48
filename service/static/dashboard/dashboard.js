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
  const EVENT_KINDS = ["status", "epoch", "checkpoint", "training_started", "training_stopped", "requeued"];
  // Each PATCH of a dashboard upload: well under the server's per-request cap.
  const UPLOAD_CHUNK_BYTES = 16 * 1024 * 1024;
  const PALETTE = ["#1f5fbf", "#b3261e", "#1b7f3b", "#7b3fa0", "#a15c00", "#00707a"];

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
    return Math.abs(value) >= 1000 || value === Math.trunc(value) ? String(value) : value.toPrecision(4);
  }

  function formatMetrics(metrics) {
    return Object.entries(metrics || {}).map(([name, value]) => `${name} ${formatNumber(value)}`).join(", ");
  }

  // Predictions as JSON, one row per line.
  function formatRows(rows) {
    if (!Array.isArray(rows)) return JSON.stringify(rows, null, 1);
    return "[\n" + rows.map((row) => "  " + JSON.stringify(row)).join(",\n") + "\n]";
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

  // The jobs page ------------------------------------------------------------------------

  function startJobsPage() {
    const body = document.querySelector("#jobs tbody");
    const updated = document.getElementById("jobs-updated");

    async function refreshJobs() {
      const { data } = await api("GET", "/v1/jobs?limit=100");
      body.replaceChildren();
      for (const job of data.items) {
        const row = element("tr", null, { "data-job-id": job.id });
        const link = element("a", job.name || job.id.slice(0, 8), { href: `/jobs/${job.id}` });
        const first = element("td");
        first.append(link, element("div", job.id, { class: "muted small" }));
        const status = element("td");
        const badge = element("span");
        statusBadge(badge, job.status);
        status.append(badge);
        const progress = element("td");
        const bar = element("progress", null, { max: "1", value: String(job.progress.fraction || 0) });
        bar.setAttribute("aria-label", `Job ${job.name || job.id} progress`);
        progress.append(bar, element("span", " " + progressText(job)));
        const metrics = job.progress.metrics || (job.metrics && job.metrics.last) || {};
        row.append(first, status, progress, element("td", formatNumber(metrics.loss)),
          element("td", formatTime(job.created_at)));
        body.append(row);
      }
      if (!data.items.length) {
        const row = element("tr");
        row.append(element("td", "No jobs yet: upload a dataset and submit one below.", { colspan: "5" }));
        body.append(row);
      }
      updated.textContent = `${data.items.length} job(s), updated ${new Date().toLocaleTimeString()}`;
    }

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
        const spec = document.getElementById("job-spec");
        spec.value = spec.value.replace(/<dataset id>|"dataset": "[0-9a-f]{32}"/,
          (match) => match.startsWith("<") ? data.id : `"dataset": "${data.id}"`);
      } catch (error) {
        showProblem(result, error);
      }
    });

    document.getElementById("submit-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const result = document.getElementById("submit-result");
      const text = document.getElementById("job-spec").value;
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

    poll(refreshJobs, () => LIST_MS);
  }

  // The job page -------------------------------------------------------------------------

  // A uPlot chart of some metrics against the epoch; rebuilt when the set of metrics changes.
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
      // A metric and its val_ twin share a colour; the validation curve is dashed.
      const bases = [...new Set(names.map((name) => name.replace(/^val_/, "")))];
      this.plot = new uPlot({
        title: this.title,
        width: Math.max(300, this.container.clientWidth),
        height: 260,
        scales: { x: { time: false } },
        axes: [{ label: "epoch", incrs: [1, 2, 5, 10, 20, 50, 100] }, {}],
        series: [
          { label: "epoch" },
          ...names.map((name) => ({
            label: name,
            stroke: PALETTE[bases.indexOf(name.replace(/^val_/, "")) % PALETTE.length],
            width: 2,
            dash: name.startsWith("val_") ? [6, 4] : undefined,
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
      if (TERMINAL.has(job.status)) document.getElementById("cancel-result").textContent = "";
      showCheckpoints(job);
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

    // Completed epochs only: an epoch a stop cut short (its checkpoint is marked partial) has
    // metrics over a few batches, which would draw a spike that training never had.
    function showCurves(job, metrics) {
      const partial = new Set(job.checkpoints.filter((c) => c.partial).map((c) => c.version));
      const keep = metrics.epochs.map((epoch, index) => (partial.has(epoch) ? -1 : index))
        .filter((index) => index >= 0);
      const epochs = keep.map((index) => metrics.epochs[index]);
      const names = Object.keys(metrics.history);
      const history = Object.fromEntries(
        names.map((name) => [name, keep.map((index) => metrics.history[name][index])]));
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
      const path = version ? `/v1/models/${jobId}/versions/${version}:predict` : `/v1/models/${jobId}:predict`;
      result.textContent = "Predicting…";
      try {
        const { data, response } = await api("POST", path, `{"instances": ${text}}`);
        result.replaceChildren(
          element("p", `Served by version ${response.headers.get("X-Model-Version") || "?"}`),
          element("pre", formatRows(data.predictions), { id: "predictions" }));
      } catch (error) {
        showProblem(result, error);
      }
    });

    listen();
    poll(refreshJob, () => (streaming() ? STREAMING_MS : LIVE_MS));
  }

  document.addEventListener("DOMContentLoaded", () => {
    if (document.querySelector('[data-page="jobs"]')) startJobsPage();
    const job = document.querySelector('[data-page="job"]');
    if (job) startJobPage(job.dataset.jobId);
  });
})();
