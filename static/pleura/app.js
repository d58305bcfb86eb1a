/* Pleura: small progressive enhancements shared by every page. */
(function () {
  "use strict";
  document.documentElement.classList.add("js");

  function notice(text, kind) {
    var box = document.getElementById("notices");
    if (!box) return;
    var p = document.createElement("p");
    p.className = "notice notice--" + (kind || "error");
    p.setAttribute("role", "alert");
    p.textContent = text;
    box.appendChild(p);
    setTimeout(function () { p.remove(); }, 8000);
  }
  window.pleuraNotice = notice;

  // The hospital switcher keeps its explicit "Switch" button: submitting on `change`
  // would switch hospitals on the first arrow key a keyboard user presses.

  // htmx answers that are not swapped (403, 404, 5xx, network) still tell the user.
  document.addEventListener("htmx:responseError", function (event) {
    var status = event.detail.xhr.status;
    if (status === 403) notice("Your role does not allow this action.");
    else if (status === 404) notice("This item is no longer available.");
    else notice("Something went wrong (" + status + "). Please try again.");
  });
  document.addEventListener("htmx:sendError", function () {
    notice("The server could not be reached. Check your connection; the page will keep trying.", "warning");
  });
})();
