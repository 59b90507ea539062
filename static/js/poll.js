// Refreshes a server-rendered fragment every few seconds so statuses change without a reload.
(function () {
  "use strict";
  var targets = document.querySelectorAll("[data-poll-url]");
  targets.forEach(function (el) {
    var url = el.getAttribute("data-poll-url");
    function done() {
      var s = el.querySelector("[data-done]");
      return s && s.getAttribute("data-done") === "1";
    }
    function tick() {
      if (done()) { return; }
      fetch(url, { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } })
        .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
        .then(function (html) { el.innerHTML = html; })
        .catch(function () { /* keep the last good view; try again next tick */ })
        .finally(function () { window.setTimeout(tick, 2000); });
    }
    window.setTimeout(tick, 2000);
  });
})();
