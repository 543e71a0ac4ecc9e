// The native job API of `ditkit serve` (docs/serving.md): the only endpoints the page calls.

/** An error answer of the server: {"error": {"message", "type", "param", "code"}}. */
export class ApiError extends Error {
  constructor(message, { param = null, code = null, status = 0 } = {}) {
    super(message);
    this.param = param;
    this.code = code;
    this.status = status;
  }
}

async function request(method, url, body) {
  const options = { method, headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, options);
  } catch (err) {
    throw new ApiError(`the server did not answer (${err.message})`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    // A proxy or crash page: report the status below.
  }
  if (!response.ok) {
    const error = data && data.error ? data.error : {};
    throw new ApiError(error.message || `${response.status} ${response.statusText}`,
      { param: error.param || null, code: error.code || null, status: response.status });
  }
  return data;
}

export function listModels() {
  return request("GET", "/v1/models").then((data) => data.data);
}

/** Queue a job; resolves to {id, state, queue_position}. */
export function submitJob(body) {
  return request("POST", "/v1/jobs", body);
}

export function getJob(id) {
  return request("GET", `/v1/jobs/${encodeURIComponent(id)}`);
}

export function cancelJob(id) {
  return request("POST", `/v1/jobs/${encodeURIComponent(id)}/cancel`);
}

const FINAL_STATES = new Set(["completed", "failed", "cancelled"]);
const POLL_MS = 500;

/**
 * Follow a job until it ends. handlers: queued({position}), progress({progress, step, steps,
 * preview}), and exactly one of completed(job), failed(message), cancelled(). The event
 * stream carries the live previews; if it breaks, the job is polled instead, so the page
 * always learns how the job ended. completed gets the full job (result URLs and seeds).
 * Returns a function that stops following.
 */
export function watchJob(id, handlers) {
  let stopped = false;
  let pollTimer = null;
  const events = new EventSource(`/v1/jobs/${encodeURIComponent(id)}/events`);

  const stop = () => {
    stopped = true;
    events.close();
    clearTimeout(pollTimer);
  };
  const finish = async (state, detail) => {
    if (stopped) return;
    stop();
    if (state === "completed") {
      try {
        handlers.completed(await getJob(id));
      } catch (err) {
        handlers.failed(err.message);
      }
    } else if (state === "failed") {
      handlers.failed(detail || "the job failed");
    } else {
      handlers.cancelled();
    }
  };
  const parse = (event) => {
    try {
      return JSON.parse(event.data || "{}");
    } catch {
      return {};
    }
  };

  events.addEventListener("queued", (e) => handlers.queued(parse(e)));
  events.addEventListener("progress", (e) => handlers.progress(parse(e)));
  events.addEventListener("completed", () => finish("completed"));
  events.addEventListener("failed", (e) => finish("failed", errorText(parse(e).error)));
  events.addEventListener("cancelled", () => finish("cancelled"));
  events.addEventListener("error", () => {
    // The stream closed or never opened (EventSource would reconnect and replay): poll.
    if (stopped) return;
    events.close();
    poll();
  });

  async function poll() {
    if (stopped) return;
    try {
      const job = await getJob(id);
      if (FINAL_STATES.has(job.state)) {
        await finish(job.state, errorText(job.error));
        return;
      }
      handlers.progress({ progress: job.progress, step: job.step, steps: job.steps });
    } catch (err) {
      if (err.status === 404) {
        await finish("failed", err.message);
        return;
      }
    }
    pollTimer = setTimeout(poll, POLL_MS);
  }

  return stop;
}

/** The error of a failed job may be a string or an {message} object. */
function errorText(error) {
  if (!error) return "";
  return typeof error === "string" ? error : error.message || JSON.stringify(error);
}
