// Draws the charts whose data the page embeds as JSON (no inline scripts; Chart.js is vendored).
(function () {
  if (typeof Chart === "undefined") return;
  document.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
    var source = document.getElementById(canvas.dataset.chart);
    if (!source) return;
    var spec = JSON.parse(source.textContent);
    new Chart(canvas, spec);
    canvas.dataset.rendered = "yes";
  });
})();
