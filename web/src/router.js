// Hash routing: "#/jobs/3?x=1" -> {path: "/jobs/3", parts: ["jobs", "3"], query: URLSearchParams}.
import { useEffect, useState } from "preact/hooks";

export function parseHash(hash = location.hash) {
  let h = hash.replace(/^#/, "");
  if (!h.startsWith("/")) h = "/" + h;
  const q = h.indexOf("?");
  const path = q >= 0 ? h.slice(0, q) : h;
  const query = new URLSearchParams(q >= 0 ? h.slice(q + 1) : "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { path, parts, query };
}

export function useRoute() {
  const [route, setRoute] = useState(parseHash());
  useEffect(() => {
    const on = () => setRoute(parseHash());
    window.addEventListener("hashchange", on);
    return () => window.removeEventListener("hashchange", on);
  }, []);
  return route;
}

export function go(path) {
  location.hash = "#" + path;
}

// Replaces the query of the current route without adding a history entry.
export function setQuery(params) {
  const { path, query } = parseHash();
  for (const [k, v] of Object.entries(params)) {
    if (v == null || v === "") query.delete(k);
    else query.set(k, String(v));
  }
  const qs = query.toString();
  history.replaceState(null, "", "#" + path + (qs ? "?" + qs : ""));
  window.dispatchEvent(new HashChangeEvent("hashchange"));
}
