// Whole-slide upload: tus-js-client sends the file in chunks and resumes after a
// dropped connection or a page reload (it remembers the upload for this file); the
// file's SHA-256 is computed here while it uploads (js-sha256, in slices) and sent at
// the end, so the server can check that what arrived is what was sent.
(function () {
  "use strict";
  var form = document.getElementById("slide-upload-form");
  if (!form || !window.tus || !window.sha256) { return; }
  var input = document.getElementById("slide-file");
  var mppInput = document.getElementById("slide-mpp");
  var box = document.getElementById("slide-progress");
  var nameEl = document.getElementById("slide-name");
  var stateEl = document.getElementById("slide-state");
  var bar = document.getElementById("slide-bar");
  var percent = document.getElementById("slide-percent");
  var pauseButton = document.getElementById("slide-pause");
  var resumeButton = document.getElementById("slide-resume");
  var status = document.getElementById("case-status");
  var token = form.querySelector("input[name=csrfmiddlewaretoken]").value;
  var maxBytes = parseInt(form.getAttribute("data-max-bytes"), 10);
  var chunkBytes = parseInt(form.getAttribute("data-chunk-bytes"), 10);
  var extensions = form.getAttribute("data-extensions").split(",");
  var current = null;

  function state(text, kind) {
    stateEl.textContent = text;
    box.setAttribute("data-state", kind || "");
    if (kind === "error") { stateEl.setAttribute("role", "alert"); } else { stateEl.removeAttribute("role"); }
  }

  function hashFile(file) {
    // Slices of one chunk: the whole file is never in memory.
    var hash = window.sha256.create();
    var offset = 0;
    function step() {
      if (offset >= file.size) { return Promise.resolve(hash.hex()); }
      var end = Math.min(file.size, offset + chunkBytes);
      return file.slice(offset, end).arrayBuffer().then(function (buf) {
        hash.update(new Uint8Array(buf));
        offset = end;
        return step();
      });
    }
    return step();
  }

  function api(method, url, body) {
    return fetch(url, {
      method: method, credentials: "same-origin",
      headers: { "X-CSRFToken": token, "Content-Type": "application/json", "Accept": "application/json" },
      body: body ? JSON.stringify(body) : undefined
    }).then(function (r) {
      return r.json().then(function (data) { return { ok: r.ok, data: data }; });
    });
  }

  function watch(url) {
    api("GET", url).then(function (r) {
      var s = r.data.status;
      if (s === "accepted") {
        state("Stored and queued for analysis; the tile progress shows above.", "done");
        if (status) { status.dispatchEvent(new CustomEvent("cancerweb:refresh")); }
      } else if (s === "refused") {
        state("Refused: " + r.data.error + " [" + r.data.error_code + "]. Nothing was stored.", "error");
      } else if (r.data.error) {
        state("Failed: " + r.data.error.message, "error");
      } else {
        state("Checking the slide (SHA-256, format, resolution, label removal)…", "checking");
        window.setTimeout(function () { watch(url); }, 1500);
      }
    }).catch(function () { window.setTimeout(function () { watch(url); }, 3000); });
  }

  function start(file) {
    var mpp = mppInput.value.trim();
    var digest = hashFile(file);
    var meta = { filename: file.name };
    if (mpp) { meta.mpp = mpp; }
    var upload = new window.tus.Upload(file, {
      endpoint: form.getAttribute("data-endpoint"),
      chunkSize: chunkBytes,
      retryDelays: [0, 1000, 2000, 4000, 8000, 15000, 30000],
      metadata: meta,
      headers: { "X-CSRFToken": token },
      removeFingerprintOnSuccess: true,
      onShouldRetry: function (err, attempt) {
        state("Connection lost; retrying (" + (attempt + 1) + ")…", "retrying");
        var code = err.originalResponse ? err.originalResponse.getStatus() : 0;
        return code === 0 || code === 409 || code === 423 || code >= 500;
      },
      onProgress: function (sent, total) {
        var p = total ? Math.floor((sent / total) * 100) : 0;
        bar.value = p;
        percent.textContent = p + " %";
        box.setAttribute("data-offset", String(sent));
        state("Uploading", "uploading");
      },
      onError: function (err) {
        var body = err.originalResponse ? err.originalResponse.getBody() : "";
        var message = "the connection was lost";
        try { message = JSON.parse(body).error.message; } catch (e) { /* a network error: no body */ }
        state("Stopped: " + message + ". Press Resume, or choose the same file again later.", "error");
        pauseButton.hidden = true;
        resumeButton.hidden = false;
      },
      onSuccess: function () {
        pauseButton.hidden = true;
        state("All bytes sent; computing the SHA-256…", "hashing");
        digest.then(function (hex) {
          box.setAttribute("data-sha256", hex);
          return api("POST", upload.url + "finish/", { sha256: hex });
        }).then(function (r) {
          if (!r.ok) { state("Refused: " + r.data.error.message, "error"); return; }
          watch(upload.url);
        });
      }
    });
    current = upload;
    upload.findPreviousUploads().then(function (previous) {
      if (previous.length) {
        upload.resumeFromPreviousUpload(previous[0]);
        box.setAttribute("data-resumed", "1");
        state("Resuming the earlier upload of this file", "uploading");
      }
      upload.start();
    });
  }

  form.addEventListener("submit", function (e) {
    e.preventDefault();
    var file = input.files[0];
    if (!file) { input.focus(); return; }
    box.hidden = false;
    nameEl.textContent = file.name;
    bar.value = 0; percent.textContent = "0 %";
    box.removeAttribute("data-resumed");
    var dot = file.name.lastIndexOf(".");
    var ext = dot >= 0 ? file.name.slice(dot).toLowerCase() : "";
    if (ext && extensions.indexOf(ext) < 0 && ext !== ".mrxs") {
      state("Not sent: " + ext + " is not a whole-slide format (" + extensions.join(", ") + ")", "error");
      return;
    }
    if (file.size > maxBytes) { state("Not sent: larger than the limit for slides", "error"); return; }
    pauseButton.hidden = false;
    resumeButton.hidden = true;
    start(file);
  });
  pauseButton.addEventListener("click", function () {
    if (current) { current.abort(); }
    pauseButton.hidden = true; resumeButton.hidden = false;
    state("Paused", "paused");
  });
  resumeButton.addEventListener("click", function () {
    if (current) { current.start(); }
    resumeButton.hidden = true; pauseButton.hidden = false;
  });
})();
