// The semithin dashboard's script (docs/DASHBOARD.md). Pages only show; every action here is a
// request of the admin API, as the CLI makes it, sent with the session cookie and the session's
// CSRF token in X-CSRF-Token. htmx (beside this file) refreshes the parts marked data-live.
(function () {
  "use strict";
  var meta = document.querySelector('meta[name="csrf-token"]');
  var csrf = meta ? meta.getAttribute("content") : "";

  function flash(msg, ok) {
    var f = document.getElementById("flash");
    if (!f) return;
    f.textContent = msg;
    f.className = ok ? "flash ok" : "flash err";
    f.hidden = false;
  }

  function api(method, path, body) {
    return fetch(path, {
      method: method,
      credentials: "same-origin",
      headers: {
        "Content-Type": "application/json",
        "X-CSRF-Token": csrf,
        "X-Semithin-User": "dashboard"
      },
      body: body === undefined ? undefined : JSON.stringify(body)
    }).then(function (r) {
      return r.text().then(function (t) {
        var j = null;
        try { j = JSON.parse(t); } catch (e) { j = null; }
        if (!r.ok) {
          throw new Error((j && j.error) || (r.status + " " + r.statusText));
        }
        return j;
      });
    });
  }

  function refresh() {
    if (!window.htmx) return;
    document.querySelectorAll("[data-live]").forEach(function (el) {
      window.htmx.trigger(el, "refresh");
    });
  }

  function hex(n) {
    var b = new Uint8Array(n);
    crypto.getRandomValues(b);
    return Array.prototype.map.call(b, function (x) {
      return x.toString(16).padStart(2, "0");
    }).join("");
  }

  function words(s) {
    return (s || "").split(/[\s,]+/).filter(function (w) { return w.length > 0; });
  }

  // <button data-api="POST /api/v1/admin/..." data-confirm="..." data-done="...">
  document.addEventListener("click", function (ev) {
    var b = ev.target.closest("button[data-api]");
    if (!b) return;
    ev.preventDefault();
    if (b.dataset.confirm && !window.confirm(b.dataset.confirm)) return;
    var parts = b.dataset.api.split(" ");
    var body = b.dataset.body ? JSON.parse(b.dataset.body) : {};
    b.disabled = true;
    api(parts[0], parts[1], body).then(function () {
      flash(b.dataset.done || "done", true);
      refresh();
    }, function (e) {
      flash(e.message, false);
    }).then(function () { b.disabled = false; });
  });

  // Forms whose fields become an admin API request.
  var forms = {
    // POST /api/v1/admin/jobs, as `semithin job apt ...` and `job reboot` send it.
    job: function (f) {
      var type = f.elements.action.value;
      var action = { type: type };
      if (type === "apt_install" || type === "apt_remove") {
        action.packages = words(f.elements.packages.value);
      }
      if (type === "apt_upgrade") {
        action.dist = f.elements.dist.checked;
        action.security_only = f.elements.security_only.checked;
      }
      var spec = {
        id: hex(16),
        action: action,
        timeout_secs: parseInt(f.elements.timeout.value, 10) || 3600,
        schedule: {},
        created_at: Math.floor(Date.now() / 1000)
      };
      return api("POST", "/api/v1/admin/jobs", {
        selector: f.elements.selector.value.trim(),
        spec: spec,
        signature: null
      }).then(function (j) { window.location.href = "/jobs/" + j.id; });
    },
    // POST /api/v1/admin/machines/NAME/labels, as `semithin fleet label` sends it.
    labels: function (f) {
      var set = {};
      words(f.elements.set.value).forEach(function (kv) {
        var i = kv.indexOf("=");
        if (i > 0) set[kv.slice(0, i)] = kv.slice(i + 1);
        else set[kv] = "";
      });
      return api("POST", f.dataset.path, {
        set: set,
        remove: words(f.elements.remove.value)
      }).then(function () { flash("labels changed", true); refresh(); });
    }
  };

  document.addEventListener("submit", function (ev) {
    var f = ev.target;
    var make = forms[f.dataset.form];
    if (!make) return;
    ev.preventDefault();
    if (f.dataset.confirm && !window.confirm(f.dataset.confirm)) return;
    make(f).catch(function (e) { flash(e.message, false); });
  });
})();
