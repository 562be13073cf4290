// The counts chart: one line per class/direction/line over every hour of the range (uPlot, vendored).
// Data comes from a JSON block in the page (no inline script: the Content-Security-Policy forbids it).
(function () {
  "use strict";
  var holder = document.getElementById("chart");
  var block = document.getElementById("chart-data");
  if (!holder || !block || typeof uPlot === "undefined") return;
  var data = JSON.parse(block.textContent);
  if (!data.x.length || !data.series.length) return;
  var tz = holder.dataset.tz || "UTC";
  var palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  var series = [{}].concat(data.series.map(function (s, i) {
    var colour = palette[i % palette.length];
    return { label: s.label, stroke: colour, fill: colour + "22", width: 2, paths: uPlot.paths.stepped({ align: 1 }) };
  }));
  var opts = {
    width: Math.max(320, holder.clientWidth || 900),
    height: 280,
    tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1e3), tz); },
    series: series,
    axes: [{}, { label: "per " + (holder.dataset.by || "hour") }],
    scales: { y: { range: function (u, min, max) { return [0, Math.max(1, max)]; } } },
  };
  new uPlot(opts, [data.x].concat(data.series.map(function (s) { return s.values; })), holder);
})();
