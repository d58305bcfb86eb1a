/* Pleura: small progressive enhancements shared by every page. */
(function () {
  "use strict";
  document.documentElement.classList.add("js");

  var NOTICE_MS = 8000;

  function notice(text, kind) {
    var box = document.getElementById("toasts");
    if (!box) return;
    // The same words already on screen (a poll failing every few seconds during an
    // outage) are kept a little longer rather than stacked.
    var shown = Array.prototype.filter.call(box.children, function (p) { return p.textContent === text; })[0];
    if (shown) {
      clearTimeout(shown.pleuraTimer);
      shown.pleuraTimer = setTimeout(function () { shown.remove(); }, NOTICE_MS);
      return;
    }
    var p = document.createElement("p");
    p.className = "notice notice--" + (kind || "error");
    p.setAttribute("role", "alert");
    p.textContent = text;
    box.appendChild(p);
    p.pleuraTimer = setTimeout(function () { p.remove(); }, NOTICE_MS);
  }
  window.pleuraNotice = notice;

  // The words of Pleura's own page for an outage (templates/503.html), if that is what
  // came back: what is out and when to try again, rather than a bare status code.
  function outageWords(xhr) {
    if ((xhr.getResponseHeader("Content-Type") || "").indexOf("text/html") !== 0) return "";
    var words = new DOMParser().parseFromString(xhr.responseText, "text/html").querySelector(".error-page .muted");
    return words ? words.textContent.trim() : "";
  }

  // The hospital switcher keeps its explicit "Switch" button: submitting on `change`
  // would switch hospitals on the first arrow key a keyboard user presses.

  // htmx answers that are not swapped (403, 404, 5xx, network) still tell the user.
  document.addEventListener("htmx:responseError", function (event) {
    var xhr = event.detail.xhr, status = xhr.status;
    var words = status === 503 ? outageWords(xhr) : "";
    var plainText = (xhr.getResponseHeader("Content-Type") || "").indexOf("text/plain") === 0;
    // The server's own words: a page out of date since its user signed in again (403,
    // config.errors.csrf_failure), a hospital switched in another tab (409,
    // hospital.tenancy.switched_away).
    if ((status === 403 || status === 409) && plainText) notice(xhr.responseText);
    else if (status === 403) notice("Your role does not allow this action.");
    else if (status === 404) notice("This item is no longer available.");
    else if (words) notice("Pleura is temporarily unavailable. " + words);
    else notice("Something went wrong (" + status + "). Please try again.");
  });
  // The CSRF token as the cookie holds it now ("" without one): signing in again in
  // another tab (after the session ended) rotates it, and the copy a page was served
  // with would be refused. upload.js sends it too.
  function csrfToken() {
    var cookie = document.cookie.split("; ").filter(function (c) { return c.indexOf("csrftoken=") === 0; })[0];
    return cookie ? cookie.slice("csrftoken=".length) : "";
  }
  window.pleuraCsrfToken = csrfToken;

  // A form keeping typed work sends the current token. Only such a form, and its server
  // checks that whoever signed in is whom the page was served to (a review's `signed_in_as`).
  document.addEventListener("htmx:configRequest", function (event) {
    var form = event.detail.elt.closest && event.detail.elt.closest("form[data-keeps-typed-work]");
    if (csrfToken() && form && form.querySelector("[name=csrfmiddlewaretoken]")) {
      event.detail.parameters.csrfmiddlewaretoken = csrfToken();
    }
  });
  // A form holding typed work (a radiologist's review) is not thrown away when saving
  // finds the session ended: the 401's HX-Redirect sent the whole window to the sign-in
  // page, the verdict and note lost. The page stays, saying how to save it.
  document.addEventListener("htmx:beforeOnLoad", function (event) {
    var form = event.detail.elt.closest && event.detail.elt.closest("[data-keeps-typed-work]");
    if (event.detail.xhr.status !== 401 || !form) return;
    event.preventDefault();
    var words = form.querySelector("[data-session-ended]");
    if (words) { words.hidden = false; words.focus(); }
  });
  // Choosing "Agree" clears the correct finding, on screen: kept from an earlier
  // disagreement, it contradicted the verdict and the review was refused for it.
  document.addEventListener("change", function (event) {
    var input = event.target;
    if (input.name !== "verdict" || input.value !== "agree" || !input.closest(".review-form")) return;
    var finding = input.form && input.form.querySelector("[name=correct_label]");
    if (finding) finding.value = "";
  });
  // A swap that replaces the control a keyboard user was on (saving a review) puts the
  // focus where the answer is, the first field in error or the notice, marked
  // data-focus-after-swap; left alone it fell back to the top of the page.
  document.addEventListener("htmx:afterSwap", function (event) {
    var swapped = document.getElementById(event.detail.target.id) || event.detail.target;
    var invalid = swapped.querySelector && swapped.querySelector("[aria-invalid='true']");
    var target = invalid || (swapped.querySelector && swapped.querySelector("[data-focus-after-swap]"));
    // A page of results replaced with the link that asked for it (Older, Newer): the focus
    // fell to the page's top while the view stayed at the bottom (UX review). The new
    // page's heading takes it, and is scrolled to.
    var lost = !document.activeElement || document.activeElement === document.body;
    if (!target && lost && swapped.hasAttribute && swapped.hasAttribute("data-results")) {
      target = swapped.querySelector("h2");
      if (target) { target.setAttribute("tabindex", "-1"); target.scrollIntoView({ block: "start" }); }
    }
    if (target) target.focus();
  });
  document.addEventListener("htmx:sendError", function () {
    notice("The server could not be reached. Check your connection; the page will keep trying.", "warning");
  });
})();
