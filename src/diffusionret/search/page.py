"""The search page: one HTML document, one script, one stylesheet, all served by server.py (no network needed).

Kept as Python strings so they ship inside the package without package-data configuration.
"""

PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>diffusionret search</title>
<link rel="stylesheet" href="/static/style.css">
</head>
<body>
<header>
  <h1>diffusionret search</h1>
  <p id="info">loading index information...</p>
</header>
<form id="search-form" autocomplete="off">
  <input id="query" name="q" type="search" required autofocus
         placeholder="describe a video, e.g. a red circle moves left">
  <label>top <select id="top" name="top">
    <option>5</option><option selected>10</option><option>20</option><option>50</option>
  </select></label>
  <label title="re-rank the top-k with the diffusion generator">
    <input id="rerank" type="checkbox" checked> diffusion re-ranking</label>
  <button type="submit">Search</button>
</form>
<p id="status" role="status"></p>
<main id="results"></main>
<script src="/static/app.js"></script>
</body>
</html>
"""

APP_JS = """'use strict';
const form = document.getElementById('search-form');
const queryBox = document.getElementById('query');
const topBox = document.getElementById('top');
const rerankBox = document.getElementById('rerank');
const statusLine = document.getElementById('status');
const results = document.getElementById('results');

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;  // never innerHTML: paths are user data
  return node;
}

async function loadInfo() {
  const response = await fetch('/api/info');
  const info = await response.json();
  document.getElementById('info').textContent =
    info.videos + ' videos from ' + info.videos_root + ' | checkpoint ' + info.model.fingerprint +
    ' (' + info.model.dir + ')' + (info.failures ? ' | ' + info.failures + ' undecodable files skipped' : '');
}

function videoUrl(hit) {
  return '/videos/' + hit.sha256;
}

// The strip PNG holds the sampled frames side by side (square frames); each is shown in its own tile, with a
// gap between tiles and the time it was sampled at, so motion reads frame by frame.
function frameStrip(hit) {
  const strip = element('div', 'frames');
  strip.title = 'frames the model saw; click to play the video';
  const image = new Image();
  image.alt = 'sampled frames of ' + hit.path;
  image.addEventListener('load', () => {
    const count = Math.max(1, Math.round(image.naturalWidth / image.naturalHeight));
    const times = hit.frame_times_s && hit.frame_times_s.length === count ? hit.frame_times_s : null;
    for (let i = 0; i < count; i++) {
      const figure = element('figure', 'frame');
      const window_ = element('div', 'tile');
      const copy = image.cloneNode();
      copy.style.transform = 'translateX(' + (-100 * i / count) + '%)';
      window_.append(copy);
      figure.append(window_);
      figure.append(element('figcaption', null, times ? times[i].toFixed(1) + ' s' : 'frame ' + (i + 1)));
      strip.append(figure);
    }
  });
  image.src = '/thumbs/' + hit.sha256 + '.png';
  strip.addEventListener('click', () => playInPlace(strip.parentNode, hit));
  return strip;
}

// Replace the frames of a result by a player of the file itself (the server answers range requests: seeking works).
function playInPlace(box, hit) {
  const existing = box.querySelector('video');
  if (existing) { existing.play(); return; }
  const video = element('video', 'player');
  video.controls = true;
  video.autoplay = true;
  video.preload = 'metadata';
  video.src = videoUrl(hit);
  video.addEventListener('error', () => {
    box.append(element('div', 'meta', 'the browser cannot play this file here; use the link to open it'));
  });
  const strip = box.querySelector('.frames');
  if (strip) strip.replaceWith(video); else box.append(video);
}

function card(hit, reranked) {
  const box = element('article', 'hit');
  const head = element('div', 'hit-head');
  head.append(element('span', 'rank', '#' + hit.rank));
  if (reranked) {
    const moved = hit.stage1_rank - hit.rank;
    const label = moved > 0 ? ' (up ' + moved + ')' : moved < 0 ? ' (down ' + (-moved) + ')' : '';
    head.append(element('span', 'stage1', 'stage 1: #' + hit.stage1_rank + label));
  }
  head.append(element('span', 'score', 'score ' + hit.score.toFixed(4)));
  box.append(head);
  box.append(frameStrip(hit));
  const path = element('div', 'path');
  const open = element('a', 'open', hit.path);
  open.href = videoUrl(hit);
  open.target = '_blank';
  open.rel = 'noopener';
  open.title = 'open the video file in a new tab';
  path.append(open);
  box.append(path);
  const meta = element('div', 'meta');
  if (hit.duration_s !== null) meta.append(hit.duration_s.toFixed(1) + ' s ');
  const play = element('button', 'play', '\u25b6 play');
  play.type = 'button';
  play.addEventListener('click', () => playInPlace(box, hit));
  meta.append(play);
  box.append(meta);
  return box;
}

async function search(query) {
  const params = new URLSearchParams({q: query, top: topBox.value, rerank: rerankBox.checked ? '1' : '0'});
  history.replaceState(null, '', '/?' + params.toString());
  statusLine.textContent = 'searching...';
  const response = await fetch('/api/search?' + params.toString());
  const body = await response.json();
  results.replaceChildren();
  if (!response.ok) {
    statusLine.textContent = 'error: ' + body.error;
    return;
  }
  const result = body.queries[0];
  const t = result.timings_ms;
  statusLine.textContent = result.hits.length + ' of ' + body.videos + ' videos, ' + result.method + ', ' +
    (result.reranked ? 're-ranked' : 'stage 1 only') + ' | ' +
    (t.encode + t.stage1 + t.rerank).toFixed(0) + ' ms (text ' + t.encode.toFixed(0) + ', stage 1 ' +
    t.stage1.toFixed(0) + ', re-ranking ' + t.rerank.toFixed(0) + ')';
  for (const hit of result.hits) results.append(card(hit, result.reranked));
}

form.addEventListener('submit', (event) => {
  event.preventDefault();
  search(queryBox.value).catch((error) => { statusLine.textContent = 'error: ' + error; });
});

const initial = new URLSearchParams(location.search);
if (initial.get('top')) topBox.value = initial.get('top');
if (initial.get('rerank') === '0') rerankBox.checked = false;
loadInfo().catch((error) => { document.getElementById('info').textContent = 'error: ' + error; });
if (initial.get('q')) { queryBox.value = initial.get('q'); form.requestSubmit(); }
"""

STYLE_CSS = """body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1d1d1f; background: #fafafa; }
h1 { font-size: 1.4rem; margin: 0 0 .2rem 0; }
#info { color: #555; font-size: .85rem; margin: 0 0 1rem 0; }
form { display: flex; gap: .75rem; align-items: center; flex-wrap: wrap; }
#query { flex: 1 1 28rem; font-size: 1rem; padding: .45rem .6rem; }
button { font-size: 1rem; padding: .4rem 1rem; }
#status { color: #555; font-size: .85rem; }
#results { display: grid; grid-template-columns: repeat(auto-fill, minmax(17rem, 1fr)); gap: .8rem; }
.hit { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .6rem; }
.hit-head { display: flex; gap: .6rem; align-items: baseline; font-size: .85rem; }
.rank { font-weight: bold; font-size: 1.1rem; }
.stage1 { color: #555; }
.score { margin-left: auto; font-family: ui-monospace, monospace; }
.frames { display: flex; flex-wrap: wrap; gap: .35rem; margin: .4rem 0; cursor: pointer; }
.frame { margin: 0; text-align: center; }
.tile { width: 3.6rem; height: 3.6rem; overflow: hidden; background: #222; border-radius: 2px; }
.tile img { height: 100%; width: auto; display: block; image-rendering: pixelated; }
.frame figcaption { font-size: .7rem; color: #555; font-family: ui-monospace, monospace; }
.player { display: block; width: 100%; max-height: 14rem; background: #000; margin: .4rem 0; }
.path { font-family: ui-monospace, monospace; font-size: .8rem; word-break: break-all; }
.path a { color: inherit; }
.meta { color: #777; font-size: .75rem; display: flex; gap: .6rem; align-items: center; }
.play { font-size: .75rem; padding: .1rem .5rem; }
"""

ASSETS = {  # URL path -> (content type, body)
    "/": ("text/html; charset=utf-8", PAGE_HTML),
    "/index.html": ("text/html; charset=utf-8", PAGE_HTML),
    "/static/app.js": ("text/javascript; charset=utf-8", APP_JS),
    "/static/style.css": ("text/css; charset=utf-8", STYLE_CSS),
}
