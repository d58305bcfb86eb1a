/* Study viewer: zoom (buttons, wheel, + / -), pan (drag, arrow keys), brightness and
   contrast for the radiograph, and the heatmap's opacity. Without JavaScript the
   image and the heatmap toggle (CSS) still work. */
(function () {
  "use strict";
  var MIN_ZOOM = 1, MAX_ZOOM = 8, STEP = 1.25, PAN_STEP = 40;

  function init(viewer) {
    var stage = viewer.querySelector("[data-stage]");
    var canvas = viewer.querySelector("[data-canvas]");
    var image = viewer.querySelector("[data-image]");
    var heatmap = viewer.querySelector("[data-heatmap]");
    if (!canvas) return;
    var state = { zoom: 1, x: 0, y: 0, brightness: 100, contrast: 100 };

    function apply() {
      if (state.zoom <= MIN_ZOOM) { state.zoom = MIN_ZOOM; state.x = 0; state.y = 0; }
      canvas.style.transform = "translate(" + state.x + "px," + state.y + "px) scale(" + state.zoom + ")";
      image.style.filter = "brightness(" + state.brightness + "%) contrast(" + state.contrast + "%)";
    }
    function zoomBy(factor) {
      state.zoom = Math.min(MAX_ZOOM, Math.max(MIN_ZOOM, state.zoom * factor));
      apply();
    }
    function reset() {
      state.zoom = 1; state.x = 0; state.y = 0; state.brightness = 100; state.contrast = 100;
      viewer.querySelectorAll("[data-filter]").forEach(function (r) { r.value = 100; });
      apply();
    }

    viewer.querySelectorAll("[data-zoom]").forEach(function (button) {
      button.addEventListener("click", function () {
        var how = button.getAttribute("data-zoom");
        if (how === "in") zoomBy(STEP); else if (how === "out") zoomBy(1 / STEP); else reset();
      });
    });
    viewer.querySelectorAll("[data-filter]").forEach(function (range) {
      range.addEventListener("input", function () {
        state[range.getAttribute("data-filter")] = Number(range.value);
        apply();
      });
    });
    var opacity = viewer.querySelector("[data-heatmap-opacity]");
    if (opacity && heatmap) {
      opacity.addEventListener("input", function () { heatmap.style.opacity = opacity.value / 100; });
    }

    stage.addEventListener("wheel", function (e) {
      e.preventDefault();
      zoomBy(e.deltaY < 0 ? STEP : 1 / STEP);
    }, { passive: false });

    var drag = null;
    stage.addEventListener("pointerdown", function (e) {
      drag = { x: e.clientX - state.x, y: e.clientY - state.y };
      stage.setPointerCapture(e.pointerId);
    });
    stage.addEventListener("pointermove", function (e) {
      if (!drag || state.zoom <= 1) return;
      state.x = e.clientX - drag.x;
      state.y = e.clientY - drag.y;
      apply();
    });
    stage.addEventListener("pointerup", function () { drag = null; });
    stage.addEventListener("pointercancel", function () { drag = null; });

    stage.addEventListener("keydown", function (e) {
      var moves = { ArrowLeft: [PAN_STEP, 0], ArrowRight: [-PAN_STEP, 0], ArrowUp: [0, PAN_STEP], ArrowDown: [0, -PAN_STEP] };
      if (moves[e.key]) { state.x += moves[e.key][0]; state.y += moves[e.key][1]; apply(); }
      else if (e.key === "+" || e.key === "=") zoomBy(STEP);
      else if (e.key === "-") zoomBy(1 / STEP);
      else if (e.key === "0") reset();
      else return;
      e.preventDefault();
    });
    apply();
    explainFailures(stage, [[image, "the radiograph"], [heatmap, "the heatmap"]]);
  }

  /* An image the server could not give (its storage down: 503; gone: 404) would show as a
     broken picture. Say which, in the server's terms, and offer to load them again. */
  function explainFailures(stage, images) {
    var notice = document.createElement("div");
    notice.className = "viewer__notice";
    notice.setAttribute("role", "alert");
    notice.hidden = true;
    var text = document.createElement("p");
    var retry = document.createElement("button");
    retry.type = "button";
    retry.className = "btn btn--small";
    retry.textContent = "Try again";
    notice.append(text, retry);
    // Above the stage, under the tools: below it, the notice of a heatmap switched on was out
    // of view, and the map read as blank (UX review). Outside the stage, whose pointer
    // capture would take the button's clicks.
    stage.before(notice);
    var failures = [], attempts = 0;  // [{img, what, order, status}], status 0 until known

    function show() {
      var known = failures.filter(function (f) { return f.status !== 0; });
      known.sort(function (a, b) { return a.order - b.order; });  // the radiograph first, whichever failed first
      if (!known.length) return;
      var subject = known.map(function (f) { return f.what; }).join(" and ");
      subject = subject.charAt(0).toUpperCase() + subject.slice(1);
      var gone = known.every(function (f) { return f.status === 404; });
      var storageDown = known.some(function (f) { return f.status === 503; });
      text.textContent = gone
        ? subject + (known.length > 1 ? " are" : " is") + " not available."
        : subject + " cannot be shown just now" + (storageDown ? ": Pleura's image storage is unavailable" : "") +
          ". Please try again in a minute.";
      retry.hidden = gone;
      notice.hidden = false;
    }
    function watch(img, what, order) {
      function onFailure() {
        // Both the error event and the check below may report one failure.
        if (failures.some(function (f) { return f.img === img; })) return;
        img.style.visibility = "hidden";
        var failure = { img: img, what: what, order: order, status: 0 };
        failures.push(failure);
        // An <img> is not told the status; asking again costs one request, on failure only.
        fetch(img.src, { credentials: "same-origin", cache: "no-store" }).then(
          function (response) { failure.status = response.status; show(); },
          function () { failure.status = -1; show(); }  // the network, not the server
        );
      }
      img.addEventListener("error", onFailure);
      img.addEventListener("load", function () { img.style.visibility = ""; });
      if (img.complete && img.naturalWidth === 0) onFailure();
    }
    images.forEach(function (pair, order) { if (pair[0]) watch(pair[0], pair[1], order); });
    retry.addEventListener("click", function () {
      attempts += 1;
      notice.hidden = true;
      failures.splice(0).forEach(function (f) { f.img.src = f.img.src.split("?")[0] + "?attempt=" + attempts; });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-viewer]").forEach(init);
  });
})();
