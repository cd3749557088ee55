// The vmhooks web console's live refresh: poll a small change stamp and,
// when it moves, fetch this same page and swap its <main> in place. The
// pages work without this file; it is the only script they load (the CSP
// allows no other, and no inline script).
(function () {
  "use strict";
  var INTERVAL_MS = 2000;
  var stamp = document.body.getAttribute("data-stamp");
  var live = document.getElementById("live");
  var busy = false;

  if (!stamp) {
    return; // an error page: nothing to refresh
  }
  if (live) {
    live.hidden = false;
  }

  function openTarget() {
    // A link to one run (#run-...) opens its details.
    var id = decodeURIComponent(location.hash.slice(1));
    var target = id && document.getElementById(id);
    if (target && target.tagName === "DETAILS") {
      target.open = true;
    }
  }

  function swap(html) {
    var fresh = new DOMParser().parseFromString(html, "text/html");
    var main = fresh.querySelector("main");
    var current = document.querySelector("main");
    if (!main || !current) {
      return;
    }
    // What the reader opened or closed stays so.
    var state = {};
    current.querySelectorAll("details[id]").forEach(function (d) { state[d.id] = d.open; });
    main.querySelectorAll("details[id]").forEach(function (d) {
      if (Object.prototype.hasOwnProperty.call(state, d.id)) {
        d.open = state[d.id];
      }
    });
    current.replaceWith(document.adoptNode(main));
    stamp = fresh.body.getAttribute("data-stamp") || stamp;
    document.title = fresh.title;
    if (live) {
      live.textContent = "live · updated " + new Date().toLocaleTimeString();
    }
  }

  function check() {
    if (busy || document.hidden) {
      return;
    }
    busy = true;
    fetch("/api/stamp", { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        if (!data || data.stamp === stamp) {
          return null;
        }
        return fetch(location.href, { credentials: "same-origin", cache: "no-store" })
          .then(function (r) { return r.ok ? r.text() : null; })
          .then(function (html) { if (html) { swap(html); } });
      })
      .catch(function () {
        if (live) {
          live.textContent = "offline";
        }
      })
      .then(function () { busy = false; });
  }

  window.addEventListener("hashchange", openTarget);
  openTarget();
  setInterval(check, INTERVAL_MS);
})();
