/* Upload page: drag and drop, one request per file so each gets its own progress
   bar and its own result. Without JavaScript the form posts every file at once. */
(function () {
  "use strict";
  var CONCURRENCY = 2;

  function humanSize(bytes) {
    if (bytes < 1024 * 1024) return Math.max(1, Math.round(bytes / 1024)) + " KB";
    return (bytes / (1024 * 1024)).toFixed(1) + " MB";
  }

  function init(form) {
    var input = form.querySelector("input[type=file]");
    var zone = form.querySelector("[data-dropzone]");
    var list = document.getElementById("upload-results");
    var queue = [];
    var active = 0;

    function addItem(file) {
      var empty = list.querySelector("[data-empty]");
      if (empty) empty.remove();
      var item = document.createElement("li");
      item.className = "upload-item";
      var name = document.createElement("span");
      name.className = "upload-item__name";
      name.textContent = file.name;
      var size = document.createElement("small");
      size.textContent = humanSize(file.size);
      name.appendChild(size);
      var progress = document.createElement("progress");
      progress.max = 100;
      progress.value = 0;
      progress.setAttribute("aria-label", "Upload progress of " + file.name);
      item.appendChild(name);
      item.appendChild(progress);
      list.insertBefore(item, list.firstChild);
      return { file: file, item: item, progress: progress };
    }

    function finish(job, html) {
      var holder = document.createElement("div");
      holder.innerHTML = html;
      var result = holder.querySelector(".upload-result") || holder.firstElementChild;
      job.progress.replaceWith(result || document.createTextNode("Done."));
      if (result && window.htmx) window.htmx.process(result);
    }

    function fail(job, message) {
      var div = document.createElement("div");
      div.className = "upload-result upload-result--error";
      div.textContent = "✕ " + message;
      job.progress.replaceWith(div);
    }

    function send(job) {
      active += 1;
      var data = new FormData();
      data.append("csrfmiddlewaretoken", form.querySelector("[name=csrfmiddlewaretoken]").value);
      data.append("patient_id", form.querySelector("[name=patient_id]").value);
      data.append("accession_number", form.querySelector("[name=accession_number]").value);
      data.append("files", job.file, job.file.name);
      var xhr = new XMLHttpRequest();
      xhr.open("POST", form.action);
      xhr.setRequestHeader("HX-Request", "true");
      xhr.upload.addEventListener("progress", function (e) {
        if (e.lengthComputable) job.progress.value = Math.round((e.loaded / e.total) * 100);
      });
      xhr.addEventListener("load", function () {
        var type = xhr.getResponseHeader("Content-Type") || "";
        // A 503 is the server's own answer too (storage unavailable): show its words.
        var answered = xhr.status < 500 || xhr.status === 503;
        if (type.indexOf("text/html") === 0 && answered && xhr.responseText.indexOf("upload-result") !== -1) {
          finish(job, xhr.responseText);
        } else if (xhr.status === 403) {
          fail(job, "Your role does not allow uploads, or your session expired; sign in again.");
        } else {
          fail(job, "The server could not store this file (" + xhr.status + "). Please try again.");
        }
      });
      xhr.addEventListener("error", function () { fail(job, "Network error: the file was not sent."); });
      xhr.addEventListener("loadend", function () { active -= 1; pump(); });
      xhr.send(data);
    }

    function pump() {
      while (active < CONCURRENCY && queue.length) send(queue.shift());
    }

    function enqueue(files) {
      Array.prototype.forEach.call(files, function (file) { queue.push(addItem(file)); });
      pump();
    }

    input.addEventListener("change", function () {
      if (input.files.length) enqueue(input.files);
      input.value = "";
    });
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      if (input.files.length) enqueue(input.files);
      input.value = "";
    });
    ["dragenter", "dragover"].forEach(function (type) {
      zone.addEventListener(type, function (e) { e.preventDefault(); zone.classList.add("is-dragover"); });
    });
    ["dragleave", "drop"].forEach(function (type) {
      zone.addEventListener(type, function (e) { e.preventDefault(); zone.classList.remove("is-dragover"); });
    });
    zone.addEventListener("drop", function (e) {
      if (e.dataTransfer && e.dataTransfer.files.length) enqueue(e.dataTransfer.files);
    });
    // Keyboard: the drop zone is a label for the file input, so Enter/Space on the
    // focused (visually hidden) input opens the picker.

    // Files chosen while the page was still loading, before this script could listen.
    if (input.files.length) {
      enqueue(input.files);
      input.value = "";
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-upload-form]").forEach(init);
  });
})();
