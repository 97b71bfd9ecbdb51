// What the dashboard needs from the browser itself, beyond the stream view's own script
// (stream-view.js): times in the reader's time zone and relative ("3 min ago"), and the
// durations of runs still going, ticking every second. The server renders a page only when
// something changed, in UTC; this script keeps what changes by the second up to date.
//
// It writes the text of elements that the page's ReactPy client also renders: only into the
// element's own text node (nodeValue), never replacing nodes, so the client keeps the nodes
// it knows. The server's clock counts: each page carries data-server-now (the moment it was
// rendered), and the difference to this browser's clock is taken out.
"use strict";

(() => {
  const skews = new WeakMap(); // [data-server-now] element -> {value, skew}

  function serverNow(element) {
    const page = element.closest("[data-server-now]");
    if (!page) return Date.now();
    const value = page.dataset.serverNow;
    let known = skews.get(page);
    if (!known || known.value !== value) {
      known = { value, skew: Date.parse(value) - Date.now() };
      skews.set(page, known);
    }
    return Date.now() + known.skew;
  }

  function duration(milliseconds) {
    milliseconds = Math.max(0, Math.floor(milliseconds));
    if (milliseconds < 1000) return `${milliseconds} ms`;
    const seconds = milliseconds / 1000;
    if (seconds < 60) return `${seconds.toFixed(1)} s`;
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return `${minutes} min ${String(Math.floor(seconds % 60)).padStart(2, "0")} s`;
    return `${Math.floor(minutes / 60)} h ${String(minutes % 60).padStart(2, "0")} min`;
  }

  const relativeFormat = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
  const absoluteFormat = new Intl.DateTimeFormat(undefined, {
    dateStyle: "medium",
    timeStyle: "medium",
  });
  const zoneFormat = new Intl.DateTimeFormat(undefined, { timeZoneName: "short" });
  const UNITS = [
    ["year", 365 * 24 * 3600],
    ["month", 30 * 24 * 3600],
    ["day", 24 * 3600],
    ["hour", 3600],
    ["minute", 60],
    ["second", 1],
  ];

  function relative(moment, now) {
    const seconds = (moment - now) / 1000;
    for (const [unit, size] of UNITS) {
      if (Math.abs(seconds) >= size || unit === "second") {
        const amount = Math.round(seconds / size);
        return unit === "second" && Math.abs(seconds) < 10 ? "just now" : relativeFormat.format(amount, unit);
      }
    }
    return "";
  }

  function absolute(moment) {
    const zone = zoneFormat.formatToParts(moment).find((part) => part.type === "timeZoneName");
    return `${absoluteFormat.format(moment)} ${zone ? zone.value : ""}`.trim();
  }

  function setText(element, text) {
    const node = element.firstChild;
    if (node && node.nodeType === Node.TEXT_NODE && !node.nextSibling) {
      if (node.nodeValue !== text) node.nodeValue = text;
    }
  }

  function tick() {
    for (const element of document.querySelectorAll("time[datetime][data-format]")) {
      const moment = new Date(element.getAttribute("datetime"));
      if (Number.isNaN(moment.getTime())) continue;
      const local = absolute(moment);
      const ago = relative(moment, serverNow(element));
      const utc = element.dataset.utc || "";
      // Relative: "3 min ago", the full moment on hovering; absolute: the other way round.
      const [text, title] =
        element.dataset.format === "relative" ? [ago, `${local} · ${utc}`] : [local, `${ago} · ${utc}`];
      setText(element, text);
      if (element.title !== title) element.title = title;
    }
    for (const element of document.querySelectorAll("[data-started-at]")) {
      const started = Date.parse(element.dataset.startedAt);
      const finished = element.dataset.finishedAt ? Date.parse(element.dataset.finishedAt) : serverNow(element);
      if (!Number.isNaN(started) && !Number.isNaN(finished)) setText(element, duration(finished - started));
    }
  }

  // New and re-rendered elements at once, and everything once a second.
  let scheduled = false;
  new MutationObserver(() => {
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(() => {
      scheduled = false;
      tick();
    });
  }).observe(document.documentElement, {
    childList: true,
    subtree: true,
    attributes: true,
    attributeFilter: ["datetime", "data-started-at", "data-finished-at", "data-server-now"],
  });
  setInterval(tick, 1000);
  tick();
})();
