// Starts Redoc on the API reference page from a static file (no inline script).
// - Redoc builds its styles at run time in <style> elements: they carry this
//   response's CSP nonce (the two it makes while its bundle loads, before it knows the
//   nonce, are allowed by their hashes in CONTENT_SECURITY_POLICY).
// - Its theme names web fonts: none is fetched, the browser's own fonts are used.
// - Its search runs in a worker made from a blob: URL, which the CSP does not allow;
//   the sidebar lists every operation instead.
// - Its sidebar shows Redocly's logo from their CDN; nothing leaves this site, so the
//   image is replaced by an empty local one (the link text stays).
(function () {
  "use strict";
  var CDN_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg";
  var EMPTY_SVG = "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' width='1' height='1'/%3E";
  var setAttribute = Element.prototype.setAttribute;
  Element.prototype.setAttribute = function (name, value) {
    if (name === "src" && String(value) === CDN_LOGO) { value = EMPTY_SVG; }
    return setAttribute.call(this, name, value);
  };
  var src = Object.getOwnPropertyDescriptor(HTMLImageElement.prototype, "src");
  Object.defineProperty(HTMLImageElement.prototype, "src", {
    configurable: true,
    enumerable: src.enumerable,
    get: src.get,
    set: function (value) { src.set.call(this, String(value) === CDN_LOGO ? EMPTY_SVG : value); }
  });
  var el = document.getElementById("redoc-container");
  var font = "system-ui, -apple-system, 'Segoe UI', sans-serif";
  window.Redoc.init(el.getAttribute("data-schema-url"), {
    nonce: el.getAttribute("data-style-nonce"),
    disableSearch: true,
    theme: { typography: { fontFamily: font, headings: { fontFamily: font } } }
  }, el);
})();
