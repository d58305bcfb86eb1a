/* The integration key shown once: a button copies it whole, so nobody copies it short by
   hand (at 390 px it ran past the screen's edge). */
(function () {
  "use strict";
  var button = document.getElementById("copy-key");
  var key = document.getElementById("raw-key");
  if (!button || !key) return;
  button.hidden = false;
  button.addEventListener("click", function () {
    var text = key.textContent.trim();
    function copied() { button.textContent = "Copied"; }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(copied);
      return;
    }
    var range = document.createRange();
    range.selectNodeContents(key);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    if (document.execCommand("copy")) copied();
  });
})();
