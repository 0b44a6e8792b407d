// mod_claude_relay admin: copy-to-clipboard and a live in-flight column.
// The pages work without this script; it only adds convenience.
(function () {
  'use strict';

  function copy(button) {
    var input = document.getElementById(button.getAttribute('data-copy'));
    if (!input) return;
    input.focus();
    input.select();
    var done = function () {
      var label = button.textContent;
      button.textContent = '\u2713';
      setTimeout(function () { button.textContent = label; }, 1500);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(input.value).then(done, function () {
        document.execCommand('copy');
        done();
      });
    } else {
      document.execCommand('copy');
      done();
    }
  }

  // One round of live counts for the rows on the page: a light call per
  // chunk of ids (the server takes at most data-live-max per call), never
  // the whole key list.
  function refresh(table) {
    if (document.hidden) return; // a tab in the background asks nothing
    var unlimited = table.getAttribute('data-unlimited') || 'unlimited';
    var max = Number(table.getAttribute('data-live-max')) || 200;
    var rows = table.querySelectorAll('tbody tr[data-id]');
    var ids = Array.prototype.map.call(rows, function (row) { return row.getAttribute('data-id'); });
    for (var i = 0; i < ids.length; i += max) {
      var url = table.getAttribute('data-live') + '?ids=' +
        ids.slice(i, i + max).map(encodeURIComponent).join(',');
      fetch(url, { credentials: 'same-origin', cache: 'no-store' })
        .then(function (res) { return res.ok ? res.json() : null; })
        .then(function (body) {
          if (!body || !body.success) return;
          body.data.forEach(function (key) { show(table, key, unlimited); });
        })
        .catch(function () { /* the next round tries again */ });
    }
  }

  function show(table, key, unlimited) {
    var row = table.querySelector('tr[data-id="' + key.id + '"]');
    if (!row) return;
    var cell = row.querySelector('td.inflight');
    if (cell) {
      cell.textContent = key.currentConcurrency + ' / ' +
        (key.concurrencyLimit > 0 ? key.concurrencyLimit : unlimited);
    }
    var tokens = row.querySelector('td.usage .tokens');
    if (tokens) tokens.textContent = String(key.totalTokens);
    var bar = row.querySelector('td.usage progress');
    if (bar) bar.value = Math.min(key.totalTokens, Number(bar.max));
  }

  document.addEventListener('DOMContentLoaded', function () {
    document.querySelectorAll('button[data-copy]').forEach(function (b) {
      b.addEventListener('click', function () { copy(b); });
    });
    var table = document.getElementById('keys');
    if (table && window.fetch) {
      setInterval(function () { refresh(table); }, 3000);
    }
  });
})();
