// Every request of the dashboard goes through getJson(), so that the
// bearer token of the API is added in exactly one place: requestHeaders().
//
// Off loopback the node's API asks for `Authorization: Bearer TOKEN`.  The
// page takes the token from its URL fragment (`/#token=TOKEN`: the part
// after `#` is never sent to a server, so it stays out of access logs and
// proxies), or asks for it once when the node answers 401, and keeps it in
// this tab's sessionStorage, which ends with the tab.

const TIMEOUT_MS = 3000; // a paused or overloaded node counts as not answering
const TOKEN_KEY = "syncmesh.apiToken";
let askedForToken = false;

function takeTokenFromUrl() {
  const match = /(?:^#|&)token=([^&]*)/.exec(window.location.hash);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    // Out of the address bar, the history and any bookmark made from now on;
    // the fragment's other settings (`fleet_rows=N`) stay.
    const rest = window.location.hash
      .slice(1)
      .split("&")
      .filter((part) => !part.startsWith("token="))
      .join("&");
    history.replaceState(null, "", window.location.pathname + window.location.search + (rest ? `#${rest}` : ""));
  }
}

function askForToken() {
  if (askedForToken) {
    return;
  }
  askedForToken = true;
  const token = window.prompt("This node's API token (api.token):");
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token.trim());
  }
}

takeTokenFromUrl();

export class HttpError extends Error {
  constructor(path, status) {
    super(`${path} answered HTTP ${status}`);
    this.path = path;
    this.status = status;
  }
}

function requestHeaders() {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) {
    headers.Authorization = `Bearer ${token}`;
  }
  return headers;
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
    if (response.status === 401) {
      askForToken();
    }
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
