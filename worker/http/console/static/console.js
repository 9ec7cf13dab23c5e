// The console's only script (served from the package; the CSP allows no inline script).
// 1. A bulk job's page polls its progress (session-authenticated JSON) until the job is over.
// 2. A button with data-busy says so while its form is being sent (Test Connection waits for a worker).
// 3. The Email tab shows the login fields only when they apply (data-when), as Keycloak's does; a field
//    with an error always shows, and without this script every field does.
"use strict";

(function () {
  var POLL_MS = 1000;

  function pollBulk(box) {
    var url = box.getAttribute("data-progress-url");
    var bar = document.getElementById("bulk-bar");
    var cancel = document.getElementById("cancel");
    function show(progress) {
      box.querySelectorAll("[data-field]").forEach(function (el) {
        var name = el.getAttribute("data-field");
        if (!(name in progress)) { return; }
        var value = progress[name];
        el.textContent = name === "rate" ? Number(value).toFixed(1) : String(value);
        if (name === "state") { el.className = "badge state-" + value; }
      });
      if (bar) { bar.value = progress.percent; }
    }
    function tick() {
      fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (reply) { if (!reply.ok) { throw new Error(String(reply.status)); } return reply.json(); })
        .then(function (progress) {
          show(progress);
          if (cancel) { cancel.disabled = !progress.cancellable; }
          if (progress.finished) {
            box.setAttribute("data-finished", "true");
          } else {
            window.setTimeout(tick, POLL_MS);
          }
        })
        .catch(function () { window.setTimeout(tick, POLL_MS * 5); });
    }
    if (box.getAttribute("data-finished") !== "true") { window.setTimeout(tick, POLL_MS); }
  }

  function loginFields(form) {
    var auth = form.querySelector("input[name=auth]");
    var type = form.querySelector("select[name=auth_type]");
    if (!auth || !type) { return; }
    function applies(when) {
      if (when === "auth") { return auth.checked; }
      return auth.checked && type.value === when;
    }
    function refresh() {
      form.querySelectorAll("[data-when]").forEach(function (field) {
        field.hidden = !applies(field.getAttribute("data-when")) && !field.classList.contains("has-error");
      });
    }
    auth.addEventListener("change", refresh);
    type.addEventListener("change", refresh);
    refresh();
  }

  document.addEventListener("DOMContentLoaded", function () {
    var settings = document.getElementById("email-form");
    if (settings) { loginFields(settings); }
    var box = document.getElementById("bulk");
    if (box) { pollBulk(box); }
    document.querySelectorAll("form").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        var button = event.submitter;
        if (button && button.getAttribute("data-busy")) {
          button.textContent = button.getAttribute("data-busy");
          button.classList.add("busy");
        }
      });
    });
  });
})();
