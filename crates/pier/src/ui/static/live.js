// Live parts of pier's console. An element with data-live="URL" follows that Server-Sent
// Events stream: "fragment" replaces its content with server-rendered (escaped) HTML,
// "append" adds log text, "end" closes the stream (else EventSource would reconnect).
// Pages are complete without this script; it only keeps them current.
"use strict";

// Replaces the element matching `selector` with its fresh server-rendered (escaped) version,
// read from this same page: once a run's log has ended, its stages and outcome have too.
function refresh(selector) {
  fetch(window.location.href, { credentials: "same-origin" })
    .then(function (resp) { return resp.text(); })
    .then(function (html) {
      var fresh = new DOMParser().parseFromString(html, "text/html").querySelector(selector);
      var old = document.querySelector(selector);
      if (fresh && old) {
        old.replaceWith(fresh);
      }
    });
}

function follow(el) {
  var source = new EventSource(el.getAttribute("data-live"));
  var fresh = true;
  source.addEventListener("fragment", function (e) {
    el.innerHTML = e.data;
  });
  source.addEventListener("append", function (e) {
    // Each connection sends the log from its start: replace what the page showed.
    if (fresh) {
      el.textContent = "";
      fresh = false;
    }
    var atBottom = el.scrollTop + el.clientHeight >= el.scrollHeight - 4;
    el.appendChild(document.createTextNode(e.data));
    if (atBottom) {
      el.scrollTop = el.scrollHeight;
    }
  });
  source.addEventListener("end", function () {
    source.close();
    el.setAttribute("data-ended", "true");
    var part = el.getAttribute("data-refresh");
    if (part) {
      refresh(part);
    }
  });
  source.addEventListener("error", function () {
    fresh = true;
  });
}

document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("[data-live]").forEach(follow);
});
