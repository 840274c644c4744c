"""The report's inline stylesheet and script."""

CSS = """
:root { --ink:#1d1d1f; --muted:#6b6b70; --line:#e4e4e7; --bg:#f6f6f4; --card:#fff;
  --best:#2b7bba; --worst:#d1495b; --random:#7a7a7a; --stratified:#3a9d5d; --orphan:#b5831f;
  --known:#7b4fa8; --hot:249,115,22; }
* { box-sizing:border-box; }
html { -webkit-text-size-adjust:100%; }
body { margin:0; background:var(--bg); color:var(--ink);
  font:14px/1.45 -apple-system,BlinkMacSystemFont,"Segoe UI",Inter,"Helvetica Neue",Arial,\
sans-serif; }
main { max-width:1320px; margin:0 auto; padding:24px 28px 48px; }
h1 { font-size:22px; margin:0 0 4px; letter-spacing:-.01em; }
h2 { font-size:16px; margin:28px 0 10px; text-transform:uppercase; letter-spacing:.06em; \
color:var(--muted); }
code, .mono { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace; \
font-size:12.5px; }
.sub { color:var(--muted); margin:0 0 14px; }
.saes { display:grid; grid-template-columns:1fr 1fr; gap:12px; }
.box { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:10px 14px; }
.box b { font-size:12px; text-transform:uppercase; letter-spacing:.05em; color:var(--muted); }
.kv { display:flex; flex-wrap:wrap; gap:6px 16px; margin-top:4px; }
.kv span { white-space:nowrap; } .kv em { font-style:normal; color:var(--muted); margin-right:4px; }
.chips { display:flex; flex-wrap:wrap; gap:8px; margin-top:12px; }
.chip { background:var(--card); border:1px solid var(--line); border-radius:999px; \
padding:3px 11px; font-size:13px; }
.chip em { font-style:normal; color:var(--muted); margin-right:4px; }
table { border-collapse:collapse; background:var(--card); font-variant-numeric:tabular-nums; }
table.summary { border:1px solid var(--line); border-radius:8px; overflow:hidden; min-width:640px; }
table.checks { border:1px solid var(--line); border-radius:8px; overflow:hidden; min-width:640px; }
.check-flag { color:#fff; background:#a0672c; border-radius:4px; padding:0 6px; font-size:11px; \
font-weight:600; }
details.rules { margin-top:6px; font-size:12.5px; color:var(--muted); }
th, td { padding:6px 14px; text-align:right; border-bottom:1px solid var(--line); }
th { font-size:12px; color:var(--muted); font-weight:600; background:#fafafa; }
th:first-child, td:first-child { text-align:left; }
tr:last-child td { border-bottom:none; }
.badge { display:inline-block; color:#fff; border-radius:4px; padding:1px 7px; font-size:11.5px; \
font-weight:600;
  text-transform:uppercase; letter-spacing:.04em; }
.badge.best { background:var(--best); } .badge.worst { background:var(--worst); } \
.badge.random { background:var(--random); }
.badge.stratified { background:var(--stratified); } .badge.orphan { background:var(--orphan); }
.badge.known { background:var(--known); }
.plots { display:grid; grid-template-columns:repeat(auto-fill,minmax(380px,1fr)); gap:14px; }
figure { margin:0; background:var(--card); border:1px solid var(--line); border-radius:8px; \
padding:10px; }
figure.wide { grid-column:1/-1; }
figure img { width:100%; height:auto; display:block; }
figcaption { color:var(--muted); font-size:12.5px; margin-top:6px; }
details.config { margin-top:8px; }
details.config summary { cursor:pointer; color:var(--muted); font-size:12.5px; }
details.config pre { background:var(--card); border:1px solid var(--line); border-radius:8px; \
padding:10px;
  overflow:auto; max-height:360px; font-size:12px; }
.toc { display:flex; flex-wrap:wrap; gap:6px; align-items:center; margin:8px 0 14px; }
.toc a { text-decoration:none; color:var(--ink); background:var(--card); \
border:1px solid var(--line);
  border-left:4px solid var(--random); border-radius:5px; padding:2px 8px; font-size:12.5px; }
.toc a.best { border-left-color:var(--best); } .toc a.worst { border-left-color:var(--worst); }
.toolbar { display:flex; gap:8px; align-items:center; color:var(--muted); font-size:12.5px; \
margin-bottom:10px; }
.pair { background:var(--card); border:1px solid var(--line); border-left:4px solid var(--random); \
border-radius:8px;
  margin:0 0 16px; padding:12px 16px 14px; scroll-margin-top:12px; }
.pair[data-kind=best] { border-left-color:var(--best); } \
.pair[data-kind=worst] { border-left-color:var(--worst); }
.pair[data-kind=stratified] { border-left-color:var(--stratified); } \
.toc a.stratified { border-left-color:var(--stratified); }
.pair[data-kind=orphan] { border-left-color:var(--orphan); } \
.toc a.orphan { border-left-color:var(--orphan); }
.agree { display:flex; flex-wrap:wrap; gap:4px 14px; font-size:12.5px; margin:-4px 0 10px; \
font-variant-numeric:tabular-nums; }
.agree em { font-style:normal; color:var(--muted); margin-right:3px; }
.silent { color:#fff; background:#777; border-radius:4px; padding:0 6px; font-size:11px; \
font-weight:600; }
.warn { background:#fff4e5; border:1px solid #f0b86e; border-radius:8px; padding:8px 12px; \
margin-top:10px; font-size:13px; }
td.ci { color:var(--muted); font-size:12px; }
.pair-head { display:flex; flex-wrap:wrap; align-items:center; gap:10px; margin-bottom:10px; }
.pair-head .title { font-weight:600; font-size:15px; }
.pair-head .sim { color:var(--muted); }
.tabs { margin-left:auto; display:inline-flex; border:1px solid var(--line); border-radius:6px; \
overflow:hidden; }
.tab { border:0; background:#fafafa; padding:3px 12px; font:inherit; font-size:12.5px; \
cursor:pointer; color:var(--muted); }
.tab + .tab { border-left:1px solid var(--line); }
.tab.active { background:var(--ink); color:#fff; }
.features { display:grid; grid-template-columns:1fr 1fr; gap:18px; }
.feature { min-width:0; }
.feature-head { display:flex; align-items:baseline; gap:8px; font-size:13px; color:var(--muted); \
margin-bottom:4px; }
.feature-head b { color:var(--ink); font-size:13.5px; }
.flag { color:#fff; background:var(--worst); border-radius:4px; padding:0 6px; font-size:11px; \
font-weight:600; }
.explanation { margin:0 0 6px; padding:7px 10px; background:#f3f6fa; \
border-left:3px solid var(--best);
  border-radius:4px; font-size:14px; white-space:pre-wrap; overflow-wrap:anywhere; }
.explanation.failed { background:#fbf1f2; border-left-color:var(--worst); }
.explanation.none { color:var(--muted); font-style:italic; }
.window-explanation { margin:0 0 6px; padding:5px 10px; background:#f7f4ee; \
border-left:3px solid #b08d57; border-radius:4px; font-size:13px; overflow-wrap:anywhere; }
.window-explanation.none { color:var(--muted); font-style:italic; }
.metrics { display:flex; flex-wrap:wrap; gap:4px 14px; font-size:12.5px; margin-bottom:8px; \
font-variant-numeric:tabular-nums; }
.metrics em { font-style:normal; color:var(--muted); margin-right:3px; }
.good { color:#1f7a3f; font-weight:600; } .muted { color:var(--muted); } \
.bad { color:var(--worst); font-weight:600; }
.crit-label { font-size:11.5px; text-transform:uppercase; letter-spacing:.05em; \
color:var(--muted); margin:8px 0 2px; }
.js .crit-label { display:none; }
.js .windows:not(.shown) { display:none; }
.win { display:flex; gap:8px; padding:3px 0; border-top:1px dashed var(--line); }
.win:first-of-type { border-top:none; }
.wv { flex:0 0 44px; text-align:right; color:var(--muted); font-size:11.5px; padding-top:2px; \
font-variant-numeric:tabular-nums; }
.toks { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace; \
font-size:12px;
  line-height:1.75; white-space:pre-wrap; overflow-wrap:anywhere; min-width:0; }
.tok { border-radius:2px; padding:1px 0; }
.tok.on { background:rgba(var(--hot),var(--a,.5)); }
.tok:hover { outline:1px solid #333; }
.glyph { color:#a0a0a6; }
.empty { color:var(--muted); font-style:italic; font-size:12.5px; }
details.more { margin-top:6px; font-size:12.5px; }
details.more summary { cursor:pointer; color:var(--muted); }
details.more ul, details.more ol { margin:4px 0; padding-left:18px; }
table.sweep { margin-top:4px; font-size:12px; border:1px solid var(--line); }
table.sweep td, table.sweep th { padding:2px 10px; }
table.sweep tr.chosen td { font-weight:700; background:#fff4e8; }
.legend { display:flex; align-items:center; gap:6px; font-size:12px; color:var(--muted); }
.ramp { width:120px; height:10px; border-radius:2px; \
background:linear-gradient(90deg,rgba(var(--hot),0),rgba(var(--hot),.9)); }
footer { margin-top:28px; color:var(--muted); font-size:12px; }
@media (max-width:900px) { .features, .saes { grid-template-columns:1fr; } \
.plots { grid-template-columns:1fr; } }
"""

JS = """
document.documentElement.classList.add('js');
function showCriterion(scope, criterion) {
  scope.querySelectorAll('.tab').forEach(function (tab) {
    tab.classList.toggle('active', tab.dataset.criterion === criterion);
  });
  scope.querySelectorAll('.windows').forEach(function (panel) {
    panel.classList.toggle('shown', panel.dataset.criterion === criterion);
  });
}
document.addEventListener('click', function (event) {
  var tab = event.target.closest('.tab');
  if (!tab) return;
  var pair = tab.closest('.pair');
  showCriterion(pair || document, tab.dataset.criterion);
});
"""
