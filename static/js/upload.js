// Upload page: drag and drop or choose many files; each file goes in its own request
// so its progress can be shown. Pre-checks here only save a round trip: the server
// validates every file again and its message per file is what the user sees.
(function () {
  "use strict";
  var form = document.querySelector("form[data-upload-url]");
  if (!form || !window.XMLHttpRequest || !window.FormData) { return; }
  var url = form.getAttribute("data-upload-url");
  var maxBytes = parseInt(form.getAttribute("data-max-bytes"), 10);
  var maxFiles = parseInt(form.getAttribute("data-max-files"), 10);
  var extensions = form.getAttribute("data-extensions").split(",");
  var input = form.querySelector("input[type=file]");
  var zone = form.querySelector("[data-dropzone]");
  var list = document.getElementById("upload-list");
  var status = document.getElementById("case-status");
  var token = form.querySelector("input[name=csrfmiddlewaretoken]").value;
  var queue = [];
  var active = 0;
  var CONCURRENT = 2;

  function precheck(file) {
    var dot = file.name.lastIndexOf(".");
    var ext = dot >= 0 ? file.name.slice(dot).toLowerCase() : "";
    if (extensions.indexOf(ext) < 0) { return "not an accepted image type (" + extensions.join(", ") + ")"; }
    if (file.size === 0) { return "the file is empty"; }
    if (file.size > maxBytes) { return "larger than the limit of " + Math.floor(maxBytes / 1048576) + " MB"; }
    return null;
  }

  function row(file) {
    var li = document.createElement("li");
    li.className = "upload-item";
    li.setAttribute("data-file", file.name);
    var name = document.createElement("span");
    name.className = "upload-name";
    name.textContent = file.name;
    var bar = document.createElement("progress");
    bar.max = 100; bar.value = 0;
    bar.setAttribute("aria-label", "Upload progress of " + file.name);
    var text = document.createElement("span");
    text.className = "upload-state";
    text.textContent = "Waiting";
    li.appendChild(name); li.appendChild(bar); li.appendChild(text);
    list.appendChild(li);
    return { li: li, bar: bar, text: text };
  }

  function finish(ui, state, message) {
    ui.li.setAttribute("data-state", state);
    ui.text.textContent = message;
    if (state === "error") {
      ui.li.classList.add("error");
      ui.text.setAttribute("role", "alert");
      ui.bar.value = 0; // a refused or failed file must not look finished
    }
    active -= 1;
    next();
  }

  // A failure that may pass on its own (the server busy or down, the connection lost)
  // gets a Retry button that sends the same file again; a refusal names its reason.
  function offerRetry(item) {
    var button = document.createElement("button");
    button.type = "button";
    button.className = "upload-retry";
    button.textContent = "Retry";
    button.setAttribute("aria-label", "Retry uploading " + item.file.name);
    button.addEventListener("click", function () {
      button.remove();
      item.ui.li.classList.remove("error");
      item.ui.text.removeAttribute("role");
      item.ui.li.setAttribute("data-state", "waiting");
      item.ui.text.textContent = "Waiting";
      queue.push(item);
      next();
    });
    item.ui.li.appendChild(button);
  }

  function send(item) {
    var ui = item.ui;
    var data = new FormData();
    data.append("files", item.file, item.file.name);
    var xhr = new XMLHttpRequest();
    xhr.open("POST", url);
    xhr.setRequestHeader("X-CSRFToken", token);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.addEventListener("progress", function (e) {
      if (e.lengthComputable) { ui.bar.value = Math.round((e.loaded / e.total) * 100); }
    });
    xhr.addEventListener("load", function () {
      var body = {};
      try { body = JSON.parse(xhr.responseText); } catch (err) { body = {}; }
      if (xhr.status === 201 || xhr.status === 200) {
        ui.bar.value = 100;
        finish(ui, "done", body.created && body.created.length ? "Uploaded; analysis queued" : "Already uploaded to this case");
        if (status) { status.dispatchEvent(new CustomEvent("cancerweb:refresh")); }
      } else if (body.errors && body.errors.length) {
        finish(ui, "error", "Refused. " + body.errors.map(function (e) { return e.file + ": " + e.message; }).join("; "));
      } else {
        var why = body.error && body.error.message ? ": " + body.error.message : "";
        finish(ui, "error", "Failed: the server answered " + xhr.status + why);
        if (xhr.status >= 500 || xhr.status === 429) { offerRetry(item); }
      }
    });
    xhr.addEventListener("error", function () {
      finish(ui, "error", "Failed: the connection was lost");
      offerRetry(item);
    });
    ui.text.textContent = "Uploading";
    ui.li.setAttribute("data-state", "uploading");
    xhr.send(data);
  }

  function next() {
    while (active < CONCURRENT && queue.length) {
      active += 1;
      send(queue.shift());
    }
  }

  function add(files) {
    var arr = Array.prototype.slice.call(files);
    if (arr.length > maxFiles) {
      var ui = row({ name: arr.length + " files" });
      ui.li.classList.add("error");
      ui.text.setAttribute("role", "alert");
      ui.text.textContent = "Refused: at most " + maxFiles + " files at a time";
      return;
    }
    arr.forEach(function (file) {
      var ui = row(file);
      var problem = precheck(file);
      if (problem) {
        ui.li.setAttribute("data-state", "error");
        ui.li.classList.add("error");
        ui.text.setAttribute("role", "alert");
        ui.text.textContent = "Not sent. " + file.name + ": " + problem;
        return;
      }
      queue.push({ file: file, ui: ui });
    });
    next();
  }

  form.addEventListener("submit", function (e) {
    e.preventDefault();
    if (!input.files.length) { input.focus(); return; }
    add(input.files);
    input.value = "";
  });
  ["dragenter", "dragover"].forEach(function (t) {
    zone.addEventListener(t, function (e) { e.preventDefault(); zone.classList.add("over"); });
  });
  zone.addEventListener("dragleave", function () { zone.classList.remove("over"); });
  zone.addEventListener("drop", function (e) {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer && e.dataTransfer.files.length) { add(e.dataTransfer.files); }
  });
})();
