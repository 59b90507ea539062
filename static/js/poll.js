// Refreshes a server-rendered fragment every few seconds so statuses change without a reload.
// A fragment marked done stops polling until something (an upload) sends "cancerweb:refresh".
(function () {
  "use strict";
  // "Analysis is queued" is true until the worker starts: once the fragment reports no
  // queued image, that message goes (it would contradict the status beside it).
  function dropStaleQueuedMessages(el) {
    var s = el.querySelector("[data-queued]");
    if (!s || s.getAttribute("data-queued") !== "0") { return; }
    document.querySelectorAll(".messages li.analysis-queued").forEach(function (li) {
      var list = li.parentNode;
      list.removeChild(li);
      if (!list.children.length && list.parentNode) { list.parentNode.removeChild(list); }
    });
  }
  // New rows in, the images already shown kept: the fragment is parsed in a <template>
  // (an inert document, which fetches nothing); an image whose address is already on
  // the page goes in without its address and is then swapped for the loaded element
  // (moved within this document, so not fetched again; adopting it into the template
  // would fetch it anew). Only new images are fetched: every fetch of a scan's picture
  // is an audited opening, so a row whose waiting time changed must not reopen its thumbnail.
  function replaceKeepingImages(el, html) {
    var shown = {};
    el.querySelectorAll("img[src]").forEach(function (img) { shown[img.getAttribute("src")] = img; });
    var template = document.createElement("template");
    template.innerHTML = html;
    var kept = [];
    template.content.querySelectorAll("img[src]").forEach(function (img) {
      var src = img.getAttribute("src");
      if (!shown[src]) { return; }
      img.removeAttribute("src");
      img.setAttribute("data-keep", String(kept.length));
      kept.push(shown[src]);
      delete shown[src];
    });
    el.replaceChildren(template.content);
    el.querySelectorAll("img[data-keep]").forEach(function (img) {
      img.parentNode.replaceChild(kept[parseInt(img.getAttribute("data-keep"), 10)], img);
    });
  }
  var targets = document.querySelectorAll("[data-poll-url]");
  targets.forEach(function (el) {
    var url = el.getAttribute("data-poll-url");
    var timer = null;
    var last = null;
    var etag = null;
    function done() {
      var s = el.querySelector("[data-done]");
      return s && s.getAttribute("data-done") === "1";
    }
    function schedule(ms) {
      if (timer) { window.clearTimeout(timer); }
      timer = window.setTimeout(tick, ms);
    }
    function tick() {
      timer = null;
      if (done()) { return; }
      var headers = { "X-Requested-With": "fetch" };
      // The server answers 304 without running the worklist query when nothing in
      // the user's care units changed since this version.
      if (etag) { headers["If-None-Match"] = etag; }
      fetch(url, { credentials: "same-origin", headers: headers, cache: "no-store" })
        .then(function (r) {
          if (r.status === 304) { return null; }
          if (!r.ok) { return Promise.reject(r.status); }
          etag = r.headers.get("ETag");
          return r.text();
        })
        .then(function (html) {
          // Only touch the DOM when something changed: keeps keyboard focus in place.
          if (html !== null && html !== last) { last = html; replaceKeepingImages(el, html); dropStaleQueuedMessages(el); }
        })
        .catch(function () { /* keep the last good view; try again next tick */ })
        .finally(function () { if (!timer) { schedule(2000); } });
    }
    el.addEventListener("cancerweb:refresh", function () {
      etag = null;  // an upload from this page: fetch the rows, whatever the counters say
      var s = el.querySelector("[data-done]");
      if (s) { s.setAttribute("data-done", "0"); }
      schedule(200);
    });
    dropStaleQueuedMessages(el);
    schedule(2000);
  });
})();
