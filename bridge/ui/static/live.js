// Refresh the live part of the status page in place (no full reload, no build chain).
// Skips a round while the tab is hidden or while focus is inside the live part.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !window.fetch) { return; }
  var every = (parseInt(live.getAttribute("data-refresh"), 10) || 10) * 1000;
  function tick() {
    if (document.visibilityState === "hidden" || live.contains(document.activeElement)) { return; }
    fetch("/ui/live", { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.text(); })
      .then(function (html) { live.innerHTML = html; live.removeAttribute("data-stale"); })
      .catch(function () { live.setAttribute("data-stale", "1"); });
  }
  window.setInterval(tick, every);
})();
