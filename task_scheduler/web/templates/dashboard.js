// task_scheduler dashboard: trigger / pause / resume buttons, and a gentle refresh.
// The API token is asked once and kept in this tab's sessionStorage only.
(function () {
  "use strict";
  var KEY = "task_scheduler_token";
  var busy = false;

  function flash(text, isError) {
    var box = document.getElementById("flash");
    box.textContent = text;
    box.className = isError ? "error" : "";
    box.hidden = false;
  }

  function token() {
    var value = sessionStorage.getItem(KEY);
    if (!value) {
      value = window.prompt("API token (the service's http.token), kept for this browser tab:");
      if (value) {
        value = value.trim();
        sessionStorage.setItem(KEY, value);
      }
    }
    return value;
  }

  function act(button) {
    var task = button.getAttribute("data-task");
    var action = button.getAttribute("data-action");
    var secret = token();
    if (!secret) {
      return;
    }
    busy = true;
    button.disabled = true;
    fetch("/api/tasks/" + encodeURIComponent(task) + "/" + action, {
      method: "POST",
      headers: { Authorization: "Bearer " + secret },
    })
      .then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (body) {
          if (response.status === 401 || response.status === 403) {
            sessionStorage.removeItem(KEY);
          }
          if (!response.ok) {
            throw new Error(body.error || response.statusText);
          }
          return body;
        });
      })
      .then(function () {
        flash(task + ": " + action + " done");
        window.location.reload();
      })
      .catch(function (error) {
        flash(task + ": " + action + " failed: " + error.message, true);
        button.disabled = false;
        busy = false;
      });
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-action]");
    if (button) {
      event.preventDefault();
      act(button);
    }
  });

  // Refresh every 15 s while visible, idle, and nothing is being typed or opened.
  setInterval(function () {
    var active = document.activeElement;
    var typing = active && (active.tagName === "INPUT" || active.tagName === "TEXTAREA");
    var reading = document.querySelector("details[open]");
    if (!document.hidden && !busy && !typing && !reading) {
      window.location.reload();
    }
  }, 15000);
})();
