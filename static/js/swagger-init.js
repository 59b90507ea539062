// Starts Swagger UI on the API docs page. A static file, so the page needs no inline
// script under the site's Content-Security-Policy.
(function () {
  "use strict";
  var el = document.getElementById("swagger-ui");
  var csrfHeader = el.getAttribute("data-csrf-header");
  var csrfToken = el.getAttribute("data-csrf-token");
  window.ui = window.SwaggerUIBundle({
    url: el.getAttribute("data-schema-url"),
    dom_id: "#swagger-ui",
    presets: [window.SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    // The default asks validator.swagger.io about the schema: no request leaves this site.
    validatorUrl: null,
    requestInterceptor: function (request) {
      // "Try it out" with the browser's session: unsafe methods carry the CSRF token.
      if (request.method && request.method !== "GET" && request.credentials === "same-origin") {
        request.headers[csrfHeader] = csrfToken;
      }
      return request;
    }
  });
})();
