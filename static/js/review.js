// Review screen: zoomable viewer with a heat-map layer, and keyboard shortcuts so a
// physician can review without the mouse (every shortcut also has a visible control).
(function () {
  "use strict";
  var el = document.getElementById("viewer");
  var viewer = null;
  var heat = null;
  var toggle = document.getElementById("heatmap-toggle");
  var slider = document.getElementById("heatmap-opacity");

  function heatOpacity() {
    if (!toggle || !toggle.checked) { return 0; }
    return parseInt(slider.value, 10) / 100;
  }
  function applyHeat() {
    if (heat) { heat.setOpacity(heatOpacity()); }
    if (el) { el.setAttribute("data-heatmap-visible", heatOpacity() > 0 ? "1" : "0"); }
  }

  var dzi = el && el.getAttribute("data-dzi-url");
  if (el && window.OpenSeadragon) {
    viewer = window.OpenSeadragon({
      element: el,
      // A whole slide is served as Deep Zoom tiles; an image as one picture.
      tileSources: dzi || { type: "image", url: el.getAttribute("data-image-url") },
      showNavigationControl: false, // our own labelled buttons below
      drawer: "canvas",
      maxZoomPixelRatio: 8,
      visibilityRatio: 0.5,
      gestureSettingsMouse: { clickToZoom: false }
    });
    var heatUrl = el.getAttribute("data-heatmap-url");
    viewer.addHandler("open", function () {
      el.setAttribute("data-ready", "1");
      if (heatUrl) {
        var overlay = { tileSource: { type: "image", url: heatUrl }, opacity: heatOpacity() };
        if (dzi) {
          // The tile map covers the grid of whole tiles from the slide's top-left corner.
          overlay.x = 0; overlay.y = 0;
          overlay.width = parseFloat(el.getAttribute("data-overlay-width"));
        }
        viewer.addTiledImage({
          tileSource: overlay.tileSource,
          x: overlay.x, y: overlay.y, width: overlay.width,
          opacity: overlay.opacity,
          success: function (e) { heat = e.item; el.setAttribute("data-heatmap-loaded", "1"); applyHeat(); }
        });
      }
    });
    window.cancerwebViewer = viewer;
    var mpp = parseFloat(el.getAttribute("data-mpp") || "0");
    var scaleLine = document.getElementById("scale-line");
    var scaleText = document.getElementById("scale-text");
    function updateScale() {
      // Micrometres per screen pixel at this zoom, rounded to a 1-2-5 length of ~100 px.
      if (!mpp || !scaleLine || !viewer.world.getItemCount()) { return; }
      var zoom = viewer.world.getItemAt(0).viewportToImageZoom(viewer.viewport.getZoom(true));
      var umPerPx = mpp / zoom;
      var target = umPerPx * 100;
      var p10 = Math.pow(10, Math.floor(Math.log10(target)));
      var nice = [1, 2, 5, 10].map(function (m) { return m * p10; }).filter(function (v) { return v <= target; }).pop() || p10;
      scaleLine.style.width = Math.round(nice / umPerPx) + "px";
      scaleText.textContent = nice >= 1000 ? (nice / 1000) + " mm" : nice + " µm";
      el.setAttribute("data-scale-um", String(nice));
    }
    viewer.addHandler("animation", updateScale);
    viewer.addHandler("open", updateScale);
    var regions = Array.prototype.slice.call(document.querySelectorAll(".region-gallery .region"));
    var regionIndex = -1;
    function showRegion(i) {
      if (!regions.length) { return; }
      regionIndex = (i + regions.length) % regions.length;
      var b = regions[regionIndex];
      var x = +b.getAttribute("data-x"), y = +b.getAttribute("data-y");
      var w = +b.getAttribute("data-w"), h = +b.getAttribute("data-h");
      var pad = Math.max(w, h) * 0.5;
      var rect = viewer.world.getItemAt(0).imageToViewportRectangle(x - pad, y - pad, w + 2 * pad, h + 2 * pad);
      viewer.viewport.fitBounds(rect);
      regions.forEach(function (r) { r.removeAttribute("aria-current"); });
      b.setAttribute("aria-current", "true");
      el.setAttribute("data-region", b.getAttribute("data-rank"));
    }
    regions.forEach(function (b, i) { b.addEventListener("click", function () { showRegion(i); }); });
    window.cancerwebShowRegion = showRegion;
    window.cancerwebRegionStep = function (d) { showRegion(regionIndex + d); };
    document.getElementById("zoom-in").addEventListener("click", function () { viewer.viewport.zoomBy(1.5); });
    document.getElementById("zoom-out").addEventListener("click", function () { viewer.viewport.zoomBy(1 / 1.5); });
    document.getElementById("zoom-home").addEventListener("click", function () { viewer.viewport.goHome(); });
  }
  // Window (level / width) of the picture as shown: a linear grey-scale mapping
  // out = (in - level) / width + 0.5 through an SVG filter on the viewer's canvas, all in
  // the browser (the stored image and what other readers see are unchanged).
  var level = document.getElementById("window-level");
  var width = document.getElementById("window-width");
  function applyWindow() {
    if (!level || !width || !el) { return; }
    var c = parseInt(level.value, 10) / 100;
    var w = Math.max(parseInt(width.value, 10), 1) / 100;
    var slope = 1 / w;
    var intercept = 0.5 - c / w;
    ["window-r", "window-g", "window-b"].forEach(function (id) {
      var f = document.getElementById(id);
      f.setAttribute("slope", slope.toFixed(4));
      f.setAttribute("intercept", intercept.toFixed(4));
    });
    var plain = level.value === "50" && width.value === "100";
    var canvas = el.querySelector(".openseadragon-canvas");
    if (canvas) { canvas.style.filter = plain ? "" : "url(#window-filter)"; }
    document.getElementById("window-level-value").textContent = level.value + " %";
    document.getElementById("window-width-value").textContent = width.value + " %";
    el.setAttribute("data-window", plain ? "" : level.value + "/" + width.value);
  }
  function resetWindow() {
    if (!level) { return; }
    level.value = "50"; width.value = "100"; applyWindow();
  }
  if (level) {
    level.addEventListener("input", applyWindow);
    width.addEventListener("input", applyWindow);
    document.getElementById("window-reset").addEventListener("click", resetWindow);
  }
  if (toggle) { toggle.addEventListener("change", applyHeat); }
  if (slider) { slider.addEventListener("input", applyHeat); }

  var help = document.getElementById("shortcut-help");
  var helpButton = document.getElementById("help-toggle");
  function toggleHelp() {
    help.hidden = !help.hidden;
    helpButton.setAttribute("aria-expanded", help.hidden ? "false" : "true");
  }
  helpButton.addEventListener("click", toggleHelp);

  var sign = document.getElementById("sign-form");
  var blinded = document.getElementById("blinded-form");
  function field(sel) { return document.querySelector(sel); }
  function outcome(value) {
    var r = sign && sign.querySelector("input[name=outcome][value=" + value + "]");
    if (r) { r.checked = true; }
    return r;
  }
  function chooseStage(n) {
    if (blinded) {
      var radio = blinded.querySelector("input[data-stage-number='" + n + "']");
      if (radio) { radio.checked = true; document.getElementById("blinded-submit").focus(); }
      return;
    }
    if (!sign) { return; }
    var select = field("#id_stage");
    var option = select && select.options[n]; // options[0] is the empty choice
    if (!option) { return; }
    if (option.value === sign.getAttribute("data-predicted")) {
      outcome("confirmed");
      select.value = "";
      field("#id_password").focus();
    } else {
      outcome("rejected");
      select.value = option.value;
      field("#id_reason").focus();
    }
  }
  function typing(target) {
    var tag = target && target.tagName;
    if (tag === "TEXTAREA" || tag === "SELECT") { return true; }
    return tag === "INPUT" && ["radio", "checkbox", "range", "button", "submit"].indexOf(target.type) < 0;
  }

  document.addEventListener("keydown", function (e) {
    // The viewer handles its own keys (arrows, +, -) when it has focus.
    if (e.defaultPrevented || e.ctrlKey || e.metaKey || e.altKey) { return; }
    if (e.key === "Escape") {
      if (typing(e.target)) { e.target.blur(); }
      if (!help.hidden) { toggleHelp(); }
      return;
    }
    if (typing(e.target)) { return; }
    var link;
    switch (e.key) {
      case "n": link = document.getElementById("next-item"); if (link) { window.location.href = link.href; } break;
      case "p": link = document.getElementById("prev-item"); if (link) { window.location.href = link.href; } break;
      case "c": if (outcome("confirmed")) { field("#id_stage").value = ""; field("#id_password").focus(); } break;
      case "x": if (outcome("rejected")) { field("#id_stage").focus(); } break;
      case "s": if (field("#id_password")) { field("#id_password").focus(); } break;
      case "h": if (toggle) { toggle.checked = !toggle.checked; applyHeat(); } break;
      case "w": resetWindow(); break;
      case "+": case "=": if (viewer) { viewer.viewport.zoomBy(1.5); } break;
      case "-": if (viewer) { viewer.viewport.zoomBy(1 / 1.5); } break;
      case "0": if (viewer) { viewer.viewport.goHome(); } break;
      case "?": toggleHelp(); break;
      case "]": if (window.cancerwebRegionStep) { window.cancerwebRegionStep(1); } break;
      case "[": if (window.cancerwebRegionStep) { window.cancerwebRegionStep(-1); } break;
      default:
        if (/^[1-9]$/.test(e.key)) { chooseStage(parseInt(e.key, 10)); } else { return; }
    }
    e.preventDefault();
  });
})();
