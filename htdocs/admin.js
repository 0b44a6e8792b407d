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

  function refresh(table) {
    var unlimited = table.getAttribute('data-unlimited') || 'unlimited';
    fetch(table.getAttribute('data-api'), { credentials: 'same-origin', cache: 'no-store' })
      .then(function (res) { return res.ok ? res.json() : null; })
      .then(function (body) {
        if (!body || !body.success) return;
        body.data.forEach(function (key) {
          var row = table.querySelector('tr[data-id="' + key.id + '"]');
          if (!row) return;
          var cell = row.querySelector('td.inflight');
          if (cell) {
            cell.textContent = key.currentConcurrency + ' / ' +
              (key.concurrencyLimit > 0 ? key.concurrencyLimit : unlimited);
          }
          var tokens = row.querySelector('td.usage .tokens');
          if (tokens && key.usage && key.usage.total) {
            tokens.textContent = String(key.usage.total.tokens);
          }
          var bar = row.querySelector('td.usage progress');
          if (bar && key.usage && key.usage.total) {
            bar.value = Math.min(key.usage.total.tokens, Number(bar.max));
          }
        });
      })
      .catch(function () { /* the next round tries again */ });
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
