// What the stream view (runstream.components.StreamView) needs from the browser itself:
// "Copy all", times in the reader's own timezone, and keeping a stream scrolled to its newest
// chunk while the reader is at the bottom. Served with the view's styles, stream-view.css.
"use strict";

(() => {
  // "Copy all": the stream's whole text, fetched from the server where the view names an
  // address for it (the page shows only what it renders: the Markdown, not its source), else the
  // text the page shows. The clipboard is given a promise of the text, so that the click's
  // permission to write it holds while the text is fetched.
  async function copyAll(button) {
    const url = button.dataset.copyUrl;
    const body = document.getElementById(button.dataset.copyTarget);
    const text = url
      ? fetch(url, { credentials: "same-origin" }).then((response) => {
          if (!response.ok) throw new Error(`the server answered ${response.status}`);
          return response.text();
        })
      : Promise.resolve(body ? body.innerText : "");
    if (window.ClipboardItem && navigator.clipboard && navigator.clipboard.write) {
      const blob = text.then((value) => new Blob([value], { type: "text/plain" }));
      await navigator.clipboard.write([new ClipboardItem({ "text/plain": blob })]);
    } else {
      await navigator.clipboard.writeText(await text);
    }
  }

  document.addEventListener("click", async (event) => {
    const button = event.target.closest(".stream-view [data-copy-target]");
    if (!button) return;
    let said = "Copied";
    try {
      await copyAll(button);
    } catch (error) {
      said = "Copy failed";
      console.error("Copy all:", error);
    }
    button.textContent = said;
    setTimeout(() => (button.textContent = "Copy all"), 1500);
  });

  // Write times come in UTC; each is shown in the reader's timezone, the zone in its title.
  const clock = new Intl.DateTimeFormat(undefined, {
    hour: "2-digit", minute: "2-digit", second: "2-digit", fractionalSecondDigits: 3, hour12: false,
  });
  const full = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit",
    second: "2-digit", fractionalSecondDigits: 3, hour12: false, timeZoneName: "short",
  });
  function localise(node) {
    const times = node.matches?.("time.chunk-time[datetime]")
      ? [node]
      : node.querySelectorAll?.("time.chunk-time[datetime]") ?? [];
    for (const time of times) {
      const moment = new Date(time.dateTime);
      if (Number.isNaN(moment.getTime())) continue;
      time.textContent = clock.format(moment);
      time.title = full.format(moment);
    }
  }

  // A stream body at (or near) its bottom stays there as chunks arrive; one scrolled up stays.
  const pinned = new WeakMap();
  document.addEventListener(
    "scroll",
    (event) => {
      const body = event.target;
      if (body instanceof Element && body.matches("[data-autotail]")) {
        pinned.set(body, body.scrollHeight - body.scrollTop - body.clientHeight < 24);
      }
    },
    true,
  );

  // Only what was added is looked at: a page of 10,000 chunks is not searched for each new one.
  new MutationObserver((mutations) => {
    for (const mutation of mutations) {
      for (const node of mutation.addedNodes) {
        if (node.nodeType === Node.ELEMENT_NODE) localise(node);
      }
    }
    for (const body of document.querySelectorAll("[data-autotail]")) {
      if (pinned.get(body) !== false) body.scrollTop = body.scrollHeight;
    }
  }).observe(document.documentElement, { childList: true, subtree: true, characterData: true });
})();
