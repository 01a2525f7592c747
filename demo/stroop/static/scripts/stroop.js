// Stroop trials: a colour word drawn in an ink colour; the key names the ink.
var colours = { r: "red", g: "green", b: "blue" };
var names = ["red", "green", "blue"];
var trials = [];
for (var i = 0; i < 24; i++) {
  trials.push({ word: names[i % 3], ink: names[Math.floor(i / 8) % 3] });
}
var current = 0;
var shownAt = 0;
// The participant's node in the network, where responses are stored.
var nodeId = null;

function show() {
  var trial = trials[current];
  var el = document.getElementById("word");
  el.textContent = trial.word.toUpperCase();
  el.style.color = trial.ink;
  document.getElementById("progress").textContent = (current + 1) + " / " + trials.length;
  shownAt = Date.now();
}

document.addEventListener("keydown", function (event) {
  var answer = colours[event.key];
  if (!answer || current >= trials.length) { return; }
  var trial = trials[current];
  if (nodeId === null) { return; }
  dallinger.createInfo(nodeId, {
    contents: JSON.stringify({ word: trial.word, ink: trial.ink, answer: answer, rt: Date.now() - shownAt }),
    info_type: "Info"
  });
  current += 1;
  if (current < trials.length) { show(); } else { dallinger.allowExit(); dallinger.goToPage("questionnaire"); }
});

dallinger.createAgent().done(function (resp) {
  nodeId = resp.node.id;
  show();
});
