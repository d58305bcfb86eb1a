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
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-viewer]").forEach(init);
  });
})();
