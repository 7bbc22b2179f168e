// Server-Sent Events over fetch: unlike EventSource it reports the HTTP status
// (a 404 tells that the daemon has no such stream) and lets us decide when to
// reconnect. Reconnects send Last-Event-ID so that nothing is missed, and
// the stored API token, when there is one (a daemon bound off loopback wants
// it for reading too).

import { getToken } from "./api.js";

export function openStream(url, { onEvent, onStatus, shouldReconnect = () => true } = {}) {
  let closed = false;
  let lastId = null;
  let ctrl = null;
  let delay = 1000;
  let timer = null;

  async function connect() {
    if (closed) return;
    ctrl = new AbortController();
    const headers = { Accept: "text/event-stream" };
    if (lastId != null) headers["Last-Event-ID"] = lastId;
    const token = getToken();
    if (token) headers.Authorization = "Bearer " + token;
    let resp;
    try {
      resp = await fetch(url, { headers, signal: ctrl.signal, cache: "no-store" });
    } catch (e) {
      if (closed) return;
      onStatus && onStatus({ state: "error", error: e });
      return retry();
    }
    if (!resp.ok || !resp.body) {
      onStatus && onStatus({ state: "http", status: resp.status });
      if (resp.status === 404 || resp.status === 410) return; // no such stream: give up
      return retry();
    }
    delay = 1000;
    onStatus && onStatus({ state: "open" });
    const reader = resp.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    let ev = { type: "message", data: [], id: null };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let nl;
        while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + (buf[nl] === "\r" && buf[nl + 1] === "\n" ? 2 : 1));
          if (line === "") {
            if (ev.data.length) {
              if (ev.id != null) lastId = ev.id;
              const text = ev.data.join("\n");
              let data = null;
              try {
                data = JSON.parse(text);
              } catch {
                data = { text };
              }
              try {
                onEvent && onEvent({ type: ev.type, id: ev.id, data });
              } catch (e) {
                console.error("event handler", e);
              }
            }
            ev = { type: "message", data: [], id: null };
            continue;
          }
          if (line[0] === ":") continue; // comment (heartbeat)
          const c = line.indexOf(":");
          const field = c < 0 ? line : line.slice(0, c);
          let val = c < 0 ? "" : line.slice(c + 1);
          if (val[0] === " ") val = val.slice(1);
          if (field === "event") ev.type = val;
          else if (field === "data") ev.data.push(val);
          else if (field === "id") ev.id = val;
          else if (field === "retry" && /^\d+$/.test(val)) delay = Math.max(500, +val);
        }
      }
    } catch (e) {
      if (closed) return;
    }
    if (closed) return;
    onStatus && onStatus({ state: "ended" });
    if (shouldReconnect()) retry();
  }

  function retry() {
    if (closed || !shouldReconnect()) return;
    onStatus && onStatus({ state: "reconnecting" });
    timer = setTimeout(connect, delay);
    delay = Math.min(delay * 2, 10000);
  }

  connect();
  return {
    close() {
      closed = true;
      clearTimeout(timer);
      if (ctrl) ctrl.abort();
    },
  };
}
