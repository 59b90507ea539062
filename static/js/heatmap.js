// Heat-map overlay on the review screen: a checkbox shows or hides it, a range input
// sets its opacity. Plain form controls, so the keyboard (Tab, Space, arrow keys) works.
(function () {
  "use strict";
  var overlay = document.getElementById("heatmap");
  var toggle = document.getElementById("heatmap-toggle");
  var slider = document.getElementById("heatmap-opacity");
  var out = document.getElementById("heatmap-opacity-value");
  if (!overlay || !toggle || !slider) return;
  function apply() {
    var pct = Number(slider.value);
    overlay.style.opacity = String(pct / 100);
    overlay.hidden = !toggle.checked;
    slider.disabled = !toggle.checked;
    slider.setAttribute("aria-valuetext", pct + " %");
    if (out) out.textContent = pct + " %";
  }
  toggle.addEventListener("change", apply);
  slider.addEventListener("input", apply);
  apply();
})();
