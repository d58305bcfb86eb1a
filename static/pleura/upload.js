/* Upload page: drag and drop, one request per file so each gets its own progress
   bar and its own result. Without JavaScript the form posts every file at once.

   A file carries the patient ID and accession number typed when it was added, not
   when its turn to be sent comes: files wait their turn, and the doctor may already
   be typing the next patient's. A file that failed for a reason that may pass (the
   storage or database out, the network) gets a Try again button that sends it again,
   with the same identifiers. */
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

    function typed(name) {
      return form.querySelector("[name=" + name + "]").value;
    }

    function progressBar(file) {
      var progress = document.createElement("progress");
      progress.max = 100;
      progress.value = 0;
      progress.setAttribute("aria-label", "Upload progress of " + file.name);
      return progress;
    }

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
      var progress = progressBar(file);
      item.appendChild(name);
      item.appendChild(progress);
      list.insertBefore(item, list.firstChild);
      return {
        file: file,
        item: item,
        shown: progress,  // the progress bar, then the result that replaced it
        progress: progress,
        patientId: typed("patient_id"),
        accessionNumber: typed("accession_number"),
        openedFor: typed("opened_for"),  // the hospital this page was opened for
      };
    }

    function show(job, element) {
      job.shown.replaceWith(element);
      job.shown = element;
    }

    function offerRetry(job) {
      var retry = document.createElement("button");
      retry.type = "button";
      retry.className = "btn btn--small upload-result__retry";
      retry.textContent = "Try again";
      retry.setAttribute("aria-label", "Try again: " + job.file.name);
      retry.addEventListener("click", function () {
        job.progress = progressBar(job.file);
        show(job, job.progress);
        queue.push(job);
        pump();
      });
      job.shown.appendChild(retry);
    }

    function finish(job, html, status) {
      var holder = document.createElement("div");
      holder.innerHTML = html;
      var result = holder.querySelector(".upload-result") || holder.firstElementChild;
      show(job, result || document.createTextNode("Done."));
      if (result && window.htmx) window.htmx.process(result);
      if (result && status >= 500) offerRetry(job);  // the server's own words for an outage (503)
    }

    function fail(job, message, mayPass) {
      var div = document.createElement("div");
      div.className = "upload-result upload-result--error";
      div.textContent = "✕ " + message;
      show(job, div);
      if (mayPass) offerRetry(job);
    }

    // In a new tab, so that this page keeps the files it has not sent yet.
    function signInLink(result) {
      var link = document.createElement("a");
      link.href = form.dataset.signInUrl;
      link.target = "_blank";
      link.rel = "noopener";
      link.textContent = "Sign in";
      result.insertBefore(link, result.querySelector(".upload-result__retry"));
    }

    // The token as the cookie holds it now (app.js), else the page's own copy.
    function csrfToken() {
      return window.pleuraCsrfToken() || typed("csrfmiddlewaretoken");
    }

    function send(job) {
      active += 1;
      var data = new FormData();
      data.append("csrfmiddlewaretoken", csrfToken());
      data.append("patient_id", job.patientId);
      data.append("accession_number", job.accessionNumber);
      data.append("opened_for", job.openedFor);
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
          finish(job, xhr.responseText, xhr.status);
        } else if (xhr.status === 401) {
          fail(job, "Your session has ended. Sign in again in another tab, then press Try again.", true);
          signInLink(job.shown);
        } else if (xhr.status === 409) {
          // Switched hospital in another tab: the server's words say which; after switching
          // back, Try again sends the file to the hospital this page was opened for.
          fail(job, xhr.responseText, true);
        } else if (xhr.status === 403) {
          fail(job, "Your role does not allow uploads, or your session expired; sign in again.", false);
        } else {
          fail(job, "The server could not store this file (" + xhr.status + "). Please try again.", xhr.status >= 500);
        }
      });
      xhr.addEventListener("error", function () { fail(job, "Network error: the file was not sent.", true); });
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

    // Leaving the page drops the files still waiting or on their way: the browser asks first.
    window.addEventListener("beforeunload", function (e) {
      if (active || queue.length) {
        e.preventDefault();
        e.returnValue = "";
      }
    });

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
