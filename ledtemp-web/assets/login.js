// ledtemp login: posts the password with the double-submit CSRF token that /auth/login-token
// set as a cookie, then opens the dashboard. No inline script anywhere: the server's CSP forbids
// it, and forbids form submissions too (form-action 'none'), hence fetch.
"use strict";

(function () {
  const form = document.getElementById("login");
  const password = document.getElementById("password");
  const submit = document.getElementById("submit");
  const problem = document.getElementById("login-problem");

  function show(text) {
    problem.textContent = text;
    problem.hidden = !text;
  }

  async function loginToken() {
    const response = await fetch("/auth/login-token", {
      headers: { Accept: "application/json" },
      credentials: "same-origin",
    });
    if (!response.ok) throw new Error("the server answered " + response.status);
    return (await response.json()).csrf;
  }

  async function login() {
    const csrf = await loginToken();
    const response = await fetch("/auth/login", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      credentials: "same-origin",
      body: JSON.stringify({ password: password.value, csrf: csrf }),
    });
    if (response.status === 429) {
      const wait = response.headers.get("Retry-After") || "60";
      return "Too many failed attempts: wait " + wait + " s.";
    }
    if (response.status === 401) return "Wrong password.";
    if (!response.ok) return "The server refused the login (" + response.status + ").";
    // The browser drops a Secure cookie that arrived over plain HTTP off loopback.
    const check = await fetch("/auth/session", { credentials: "same-origin" });
    if (check.status === 401) {
      return "Logged in, but the browser refused the session cookie: open the dashboard over HTTPS.";
    }
    window.location.assign("/");
    return null;
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submit.disabled = true;
    show(null);
    login()
      .then((message) => {
        if (message) {
          show(message);
          password.select();
        }
      })
      .catch((e) => show("Could not reach the server: " + e.message))
      .finally(() => {
        submit.disabled = false;
      });
  });
})();
