// What the dashboard needs from the browser itself: copying a stream's text, and keeping a
// stream scrolled to its newest chunk while the reader is at the bottom.
"use strict";

document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy-target]");
  if (!button) return;
  const source = document.getElementById(button.dataset.copyTarget + "-text");
  if (!source) return;
  try {
    await navigator.clipboard.writeText(source.value);
    button.textContent = "Copied";
  } catch {
    source.hidden = false;
    source.select();
    document.execCommand("copy");
    source.hidden = true;
    button.textContent = "Copied";
  }
  setTimeout(() => (button.textContent = "Copy all"), 1500);
});

// A stream body at (or near) its bottom stays there as chunks arrive; one scrolled up stays put.
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
new MutationObserver(() => {
  for (const body of document.querySelectorAll("[data-autotail]")) {
    if (pinned.get(body) !== false) body.scrollTop = body.scrollHeight;
  }
}).observe(document.documentElement, { childList: true, subtree: true, characterData: true });
