// Every request of the dashboard goes through getJson(), so that the
// bearer token of the API (a separate issue) is added in exactly one
// place: requestHeaders().

const TIMEOUT_MS = 3000; // a paused or overloaded node counts as not answering

export class HttpError extends Error {
  constructor(path, status) {
    super(`${path} answered HTTP ${status}`);
    this.path = path;
    this.status = status;
  }
}

function requestHeaders() {
  // The API asks for no credentials yet.  When it does, add here:
  // { Authorization: `Bearer ${token}` }.
  return { Accept: "application/json" };
}

/** GET `path` (relative to the page) as JSON; throws HttpError or a network error. */
export async function getJson(path) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
  try {
    const response = await fetch(path, {
      headers: requestHeaders(),
      cache: "no-store",
      signal: controller.signal,
    });
    if (!response.ok) {
      throw new HttpError(path, response.status);
    }
    return await response.json();
  } catch (error) {
    if (error.name === "AbortError") {
      throw new Error(`${path}: no answer within ${TIMEOUT_MS / 1000} s`);
    }
    throw error;
  } finally {
    clearTimeout(timer);
  }
}
